//go:build !linux

package nslab

import (
	"errors"
	"os"
)

// openPacketSocket fails: packet sockets, like network namespaces, are
// Linux only.
func openPacketSocket(string) (*os.File, error) {
	return nil, errors.New("nslab: packet sockets are Linux only")
}
