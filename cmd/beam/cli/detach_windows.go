//go:build windows

package cli

import "syscall"

// detachAttr starts a child in its own process group without a console,
// so it outlives the terminal that ran beam up.
func detachAttr() *syscall.SysProcAttr {
	const detachedProcess = 0x00000008 // DETACHED_PROCESS
	return &syscall.SysProcAttr{CreationFlags: syscall.CREATE_NEW_PROCESS_GROUP | detachedProcess}
}
