// Package proxyproto writes PROXY protocol headers (haproxy's
// proxy-protocol.txt), which the edge and a device's expose proxy send
// to apps that ask for them.
package proxyproto

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// proxyV2Sig is the 12-byte signature that opens a PROXY protocol v2
// header.
const proxyV2Sig = "\r\n\r\n\x00\r\nQUIT\n"

// AppendHeader appends a PROXY protocol header of version 1 or 2
// (haproxy's proxy-protocol.txt) for a connection from src to dst.
//
// Version 1 is one text line:
//
//	"PROXY TCP4 <src ip> <dst ip> <src port> <dst port>\r\n" (TCP6 for IPv6)
//
// Version 2 is binary:
//
//	sig(12) | ver_cmd(1)=0x21 (v2, PROXY) | fam(1) | len(2) | addresses(len)
//
// with fam 0x11 TCP over IPv4 / 0x21 TCP over IPv6 (0x12 / 0x22 for UDP)
// and addresses src_addr | dst_addr | src_port(2) | dst_port(2), 4 or 16
// bytes per address. When src and dst differ in family, both are sent as
// IPv6 (IPv4-mapped). Unknown addresses give "PROXY UNKNOWN\r\n" or a v2
// LOCAL header.
func AppendHeader(b []byte, version int, network string, src, dst netip.AddrPort) []byte {
	sa, da := src.Addr().Unmap(), dst.Addr().Unmap()
	valid := src.IsValid() && dst.IsValid()
	six := sa.Is6() || da.Is6()
	if six {
		sa, da = netip.AddrFrom16(sa.As16()), netip.AddrFrom16(da.As16())
	}
	if version == 1 {
		if !valid || network != "tcp" {
			return append(b, "PROXY UNKNOWN\r\n"...)
		}
		fam := "TCP4 "
		if six {
			fam = "TCP6 "
		}
		b = append(b, "PROXY "...)
		b = append(b, fam...)
		b = append(b, sa.String()...)
		b = append(b, ' ')
		b = append(b, da.String()...)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...)
	}
	b = append(b, proxyV2Sig...)
	if !valid {
		b = append(b, 0x20, 0x00) // v2 LOCAL, AF_UNSPEC
		return binary.BigEndian.AppendUint16(b, 0)
	}
	b = append(b, 0x21)
	fam := byte(0x10) // AF_INET
	n := 12
	if six {
		fam = 0x20 // AF_INET6
		n = 36
	}
	if network == "udp" {
		fam |= 0x02 // DGRAM
	} else {
		fam |= 0x01 // STREAM
	}
	b = append(b, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, sa.AsSlice()...)
	b = append(b, da.AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
