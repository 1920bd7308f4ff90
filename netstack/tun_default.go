//go:build !linux

package netstack

import "log/slog"

func newHostNet(string, int, *slog.Logger) (hostNet, error) { return nil, ErrTUNUnsupported }
