package localapi

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

// maxCPUProfile bounds ?seconds= of a CPU profile.
const maxCPUProfile = 5 * time.Minute

// debugProfile serves GET /localapi/v0/debug/profile/{name}: the
// runtime/pprof profile of that name (heap, allocs, goroutine, ...) in
// pprof's format, or as text with ?debug=1 or 2, like net/http/pprof
// (which is not linked in: it registers itself on http.DefaultServeMux).
// With ?gc=1 the heap is collected first, so a heap profile shows what is
// live. The name "cpu" is a CPU profile of the next ?seconds= (default
// 10). Only the daemon's own user and root may read profiles, not the
// operator.
func (h *Handler) debugProfile(w http.ResponseWriter, r *http.Request) {
	if p := peerOf(r); p.known && !isOwner(p.uid) {
		writeError(w, http.StatusForbidden, errors.New("profiles are for the daemon's own user"))
		return
	}
	if r.PathValue("name") == "cpu" {
		cpuProfile(w, r)
		return
	}
	prof := pprof.Lookup(r.PathValue("name"))
	if prof == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("no profile %q", r.PathValue("name")))
		return
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
	}
	if debug != 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	prof.WriteTo(w, debug)
}

// cpuProfile writes a CPU profile of the next ?seconds= (default 10) in
// pprof's format; it ends early if the client goes away.
func cpuProfile(w http.ResponseWriter, r *http.Request) {
	d := 10 * time.Second
	if s := r.URL.Query().Get("seconds"); s != "" {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil || n <= 0 || time.Duration(n*float64(time.Second)) > maxCPUProfile {
			writeError(w, http.StatusBadRequest, fmt.Errorf("seconds=%q: want a number of seconds up to %v", s, maxCPUProfile))
			return
		}
		d = time.Duration(n * float64(time.Second))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		writeError(w, http.StatusConflict, fmt.Errorf("start CPU profile: %w", err))
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}
