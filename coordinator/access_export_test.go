package coordinator

import "beam.dev/beam/wire"

// AccessCostForTest returns how many times the access policy was compiled
// for a network's members, and how many node visibilities the compiled
// policies in force have computed.
func (s *Server) AccessCostForTest() (compiles, visibilities int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, na := range s.access.nets {
		visibilities += na.compiled.VisibilityComputed()
	}
	return s.access.compiles, visibilities
}

// StreamSim stands in for the map streams of a network's nodes for
// benchmarks: each has a session, and Step runs what each stream's
// goroutine runs for the changes marked since (delta and encoding), in
// one goroutine, without sealing or writing.
type StreamSim struct {
	s       *Server
	streams []*simStream
}

type simStream struct {
	ss *session
	st sentState
}

// NewStreamSimForTest gives every node a simulated stream that speaks
// protocol version and has been sent its full map. Nodes must not have
// real streams.
func (s *Server) NewStreamSimForTest(version int) (*StreamSim, error) {
	sim := &StreamSim{s: s}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.nodes {
		e.version = version
		ss := newSession(k, e.rec.NetworkID)
		s.sessions[k] = ss
		sim.streams = append(sim.streams, &simStream{ss: ss})
	}
	for _, st := range sim.streams {
		e := s.nodes[st.ss.key]
		st.st.self = s.sharedNodeLocked(e)
		_, set, computed := s.peersLocked(st.st.self, st.ss.networkID, now)
		st.st.peers, st.st.ver = set, s.changeVer
		st.st.filter = s.filterLocked(st.st.self, st.ss.networkID, now, computed)
		s.edge.fillExtrasLocked(st.ss, &st.st.extras, &wire.MapResponse{})
	}
	for _, st := range sim.streams {
		st.ss.take()
		select {
		case <-st.ss.wake:
		default:
		}
	}
	return sim, nil
}

// Step runs every stream's delta for what changed since the last Step and
// returns how many frames they would send and their encoded bytes.
func (sim *StreamSim) Step() (frames, bytes int, err error) {
	for _, st := range sim.streams {
		select {
		case <-st.ss.wake:
		default:
			continue // nothing was marked for it
		}
		full, _, _, _, _, _ := st.ss.take()
		f := sim.s.delta(st.ss, &st.st, full)
		if f == nil {
			continue
		}
		resp := f.resp
		if resp.Self == nil && len(f.peers) == 0 && len(resp.PeersRemoved) == 0 && len(resp.PeersOnline) == 0 &&
			!resp.PacketFilterSet && len(resp.FilterSetChanges) == 0 {
			continue
		}
		bodies, err := f.encode(false, formJSON)
		if err != nil {
			return 0, 0, err
		}
		for _, b := range bodies {
			frames++
			bytes += len(b)
		}
	}
	return frames, bytes, nil
}

// Close removes the simulated sessions.
func (sim *StreamSim) Close() {
	sim.s.mu.Lock()
	defer sim.s.mu.Unlock()
	for _, st := range sim.streams {
		if sim.s.sessions[st.ss.key] == st.ss {
			delete(sim.s.sessions, st.ss.key)
		}
	}
}
