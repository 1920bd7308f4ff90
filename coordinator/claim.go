package coordinator

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// A public name (and with it the edge port of a tcp or udp route) belongs
// to the node that claimed it first. Another node may serve it too only in
// a pool: every node on the name asked for one (wire.ExposeRequest.Pool)
// and they share a user or a tag. Everyone else is refused with the
// owner's name. Each route of one node is its own: a second route of the
// same protocol under the node's default name gets the next free name
// (NAME-2, NAME-3, ...), and under an explicit name it is refused rather
// than taking over the first one's URL.

// claim is where a new route goes.
type claim struct {
	host string
	// same is this node's route with the same host, proto and port, which
	// the new one replaces in place (a re-expose); nil for none.
	same *memRoute
	// pool is another node's route on host that the new one joins; nil
	// for none.
	pool *memRoute
}

// maxDefaultNames bounds the names tried for a route published under the
// node's default name: NAME, NAME-2, ..., NAME-9.
const maxDefaultNames = 9

// claim finds the host for req from node self (key nk) and checks that
// the node may publish there. es.changeMu held, or (expose, before
// looking up a custom domain's proof) a check that is made again under it.
func (es *edgeRoutes) claim(self *NodeRecord, nk key.NodePublic, req *wire.ExposeRequest) (claim, *apiError) {
	custom := req.CustomDomain != ""
	var hosts []string
	switch {
	case custom:
		h, aerr := es.customHost(req.CustomDomain)
		if aerr != nil {
			return claim{}, aerr
		}
		hosts = []string{h}
	case req.Name != "":
		h, aerr := es.publicHost(req.Name)
		if aerr != nil {
			return claim{}, aerr
		}
		hosts = []string{h}
	default:
		h, aerr := es.publicHost(self.Node.Name)
		if aerr != nil {
			return claim{}, aerr
		}
		hosts = []string{h}
		label, _, _ := strings.Cut(h, ".")
		for i := 2; i <= maxDefaultNames; i++ {
			if l := fmt.Sprintf("%s-%d", label, i); len(l) <= 63 {
				hosts = append(hosts, l+"."+es.cfg.domain)
			}
		}
	}
	var first *apiError
	for _, host := range hosts {
		c, aerr := es.claimHost(self, nk, host, custom, req)
		if aerr == nil {
			return c, nil
		}
		if aerr.status != http.StatusConflict || len(hosts) == 1 {
			return claim{}, aerr
		}
		if first == nil {
			first = aerr
		}
	}
	first.msg += "; choose a name with --name"
	return claim{}, first
}

// claimHost checks that node self (key nk) may publish req under host.
func (es *edgeRoutes) claimHost(self *NodeRecord, nk key.NodePublic, host string, custom bool, req *wire.ExposeRequest) (claim, *apiError) {
	s := es.core
	// The policy's expose section says who may publish which names.
	policyName := host
	if !custom {
		policyName, _, _ = strings.Cut(host, ".")
	}
	if node := self.Node; !s.mayExpose(&node, policyName) {
		return claim{}, errorf(http.StatusForbidden, wire.CodeForbidden, "the access policy does not let this node publish %q", policyName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	es.mu.Lock() // nothing below takes a lock
	defer es.mu.Unlock()
	c := claim{host: host}
	var others []*memRoute
	for _, r := range es.routes {
		if r.Host != host {
			continue
		}
		switch {
		case r.NetworkID != self.NetworkID:
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken, "name %s is taken by another network", host)
		case r.node != nk:
			others = append(others, r)
		case r.Proto != req.Proto:
			// The node's own route of another protocol: independent.
		case r.Port != req.Port:
			label := host
			if !custom {
				label, _, _ = strings.Cut(host, ".")
			}
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"this device already publishes %s (%s) for its port %d; stop that route first (beam expose stop %s) or choose another name", host, r.Proto, r.Port, label)
		default:
			c.same = r
		}
	}
	// The device tells its http and tcp routes apart by port: one port,
	// one upstream.
	forwards := func(proto string) bool { return proto == "http" || proto == "tcp" }
	for _, r := range es.byNode[nk] {
		if r.Port == req.Port && forwards(r.Proto) && forwards(req.Proto) && r.Upstream != req.Upstream && r != c.same {
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"port %d of this device already forwards %s to %s; stop that route first or use another port", r.Port, r.Host, upstreamOrLocal(r.Upstream, r.Port))
		}
	}
	slices.SortFunc(others, func(a, b *memRoute) int { return int(a.ID - b.ID) })
	for _, o := range others {
		owner, ownerNode := es.describeNodeLocked(o.node)
		switch {
		case !req.Pool:
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"name %s is published by %s; a name belongs to the node that claimed it (devices of one user or tag can share it when each publishes it with --pool)", host, owner)
		case !o.Pool:
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"name %s is published by %s, which did not ask for a pool (--pool)", host, owner)
		case o.Proto != req.Proto:
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"name %s is published by %s as %s, not %s", host, owner, o.Proto, req.Proto)
		case ownerNode == nil || !mayShare(s.currentPolicy(), &self.Node, ownerNode):
			return claim{}, errorf(http.StatusConflict, wire.CodeNameTaken,
				"name %s is published by %s; pools are only for devices of one user or one tag", host, owner)
		}
		c.pool = o
	}
	return c, nil
}

// upstreamOrLocal says where a route of port forwards to.
func upstreamOrLocal(upstream string, port uint16) string {
	if upstream == "" {
		return fmt.Sprintf("127.0.0.1:%d", port)
	}
	return upstream
}

// describeNodeLocked names node k for an error message: "node web (user
// alice)", "node db (tag:db)". Server.mu held.
func (es *edgeRoutes) describeNodeLocked(k key.NodePublic) (string, *wire.Node) {
	e := es.core.nodes[k]
	if e == nil {
		return "another node", nil
	}
	n := &e.rec.Node
	switch {
	case len(n.Tags) > 0:
		return fmt.Sprintf("node %s (%s)", n.Name, strings.Join(n.Tags, ", ")), n
	case n.User != "":
		return fmt.Sprintf("node %s (user %s)", n.Name, n.User), n
	}
	return "node " + n.Name, n
}

// mayShare reports whether nodes a and b may serve one name as a pool:
// they share a tag the policy p grants (one dropped from tagOwners is not
// held), or neither is tagged and they belong to the same user (nodes
// without a user belong to the network's admin).
func mayShare(p *policy.Policy, a, b *wire.Node) bool {
	heldA, _ := p.HeldTags(a)
	heldB, _ := p.HeldTags(b)
	for _, t := range heldA {
		if slices.Contains(heldB, t) {
			return true
		}
	}
	return len(a.Tags) == 0 && len(b.Tags) == 0 && a.User == b.User
}
