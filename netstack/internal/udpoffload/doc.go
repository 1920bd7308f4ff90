// Package udpoffload turns on and reads the kernel's UDP offloads for a
// socket: generic receive offload (UDP_GRO, many datagrams of one source
// in one read) and segmentation offload (UDP_SEGMENT, many equal-size
// datagrams in one send). The bind and the peer relay server share it.
// Elsewhere than Linux every offload reports itself absent.
package udpoffload
