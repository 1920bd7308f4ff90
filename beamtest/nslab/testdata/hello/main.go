// Command hello prints its IPv4 interface addresses, one a line, so a test
// can tell which namespace it ran in.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			fmt.Println(ipn.IP)
		}
	}
}
