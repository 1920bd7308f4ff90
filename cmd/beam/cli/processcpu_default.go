//go:build !unix

package cli

import "time"

// processCPU returns 0 where getrusage is missing: every window then looks
// idle, and startMemoryRelease never releases (it waits for a busy one).
func processCPU() time.Duration { return 0 }
