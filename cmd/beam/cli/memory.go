package cli

import (
	"runtime/debug"
	"sync"
	"time"
)

// A daemon that moved bulk data holds on to the memory it used: most of
// its heap is then wireguard-go's pool of 64 KiB message buffers (a
// sync.Pool, unbounded on Linux, emptied only by two garbage collections
// in a row), and an idle daemon allocates too little to collect at all
// until the runtime's two-minute forced collection, after which the
// scavenger returns pages to the OS only gradually. Measured on two real
// daemons after six 192 MiB transfers: 43-48 MiB resident after 40 s idle,
// against 20 MiB before any traffic.
//
// So the daemon watches its own CPU time: after a window in which it was
// busy comes one in which it was idle, it collects twice (emptying the
// pools) and returns the freed memory to the OS, once per busy spell.

const (
	// memoryIdleWindow is how often the daemon checks its CPU time.
	memoryIdleWindow = 10 * time.Second
	// memoryIdleCPU is the CPU time under which a window counts as idle:
	// 1% of one core. An idle daemon with peers (keepalives, disco) uses
	// a few milliseconds per window; one moving data, most of a core.
	memoryIdleCPU = memoryIdleWindow / 100
)

// startMemoryRelease starts the watch described above, checking every
// window; the returned func stops it and waits for it to end.
func startMemoryRelease(window, idleCPU time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(window)
		defer t.Stop()
		last := processCPU()
		released := true // nothing to give back before the first busy window
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			now := processCPU()
			busy := now-last >= idleCPU
			last = now
			switch {
			case busy:
				released = false
			case !released:
				debug.FreeOSMemory() // moves the pools' buffers to their victim caches
				debug.FreeOSMemory() // frees them, and returns the pages
				released = true
				last = processCPU() // the collections are not traffic
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}
