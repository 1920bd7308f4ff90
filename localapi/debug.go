package localapi

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strconv"
)

// debugProfile serves GET /localapi/v0/debug/profile/{name}: the
// runtime/pprof profile of that name (heap, allocs, goroutine, ...) in
// pprof's format, or as text with ?debug=1 or 2, like net/http/pprof
// (which is not linked in: it registers itself on http.DefaultServeMux).
// With ?gc=1 the heap is collected first, so a heap profile shows what is
// live. Only the daemon's own user and root may read profiles, not the
// operator.
func (h *Handler) debugProfile(w http.ResponseWriter, r *http.Request) {
	if p := peerOf(r); p.known && !isOwner(p.uid) {
		writeError(w, http.StatusForbidden, errors.New("profiles are for the daemon's own user"))
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
