package relay

import (
	"context"
	"sync"
)

// claimGates runs the claims of one server-id on this instance one at a
// time, from before the binary's 101 until its slot is installed or its
// claim refused, and lets whoever finds no slot while a claim is in
// progress (a phone, a remote join, another instance's probe) wait for its
// outcome. A claim may wait on the network (a probe of the incumbent, the
// cluster's store and other instances), so its gate is its server-id's
// own: no lock shared between tenants is held across a network wait, and
// a tenant that keeps re-claiming its own server-id queues only behind
// itself.
//
// A gate exists only while a claim holds it or someone waits on it (each
// such user is a connection's handler or a bounded request handler, so the
// socket caps bound the map: a flood of distinct server-ids costs one
// entry per open socket, freed when it is done).
type claimGates struct {
	mu    sync.Mutex
	gates map[string]*claimGate
}

// claimGate is one server-id's gate.
type claimGate struct {
	turn chan struct{} // holds a token while a claim is in progress
	refs int           // holders and waiters; guarded by claimGates.mu
}

func (g *claimGates) ref(serverID string, create bool) *claimGate {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.gates[serverID]
	if e == nil {
		if !create {
			return nil
		}
		if g.gates == nil {
			g.gates = make(map[string]*claimGate)
		}
		e = &claimGate{turn: make(chan struct{}, 1)}
		g.gates[serverID] = e
	}
	e.refs++
	return e
}

func (g *claimGates) unref(serverID string, e *claimGate) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if e.refs--; e.refs == 0 {
		delete(g.gates, serverID)
	}
}

// lock waits for serverID's turn (claims are served in arrival order) and
// returns the function that ends it, to be called exactly once.
func (g *claimGates) lock(serverID string) (unlock func()) {
	e := g.ref(serverID, true)
	e.turn <- struct{}{}
	return func() {
		<-e.turn
		g.unref(serverID, e)
	}
}

// pending reports whether a claim of serverID is in progress here.
func (g *claimGates) pending(serverID string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gates[serverID] != nil
}

// wait returns once no claim of serverID that was in progress or queued
// when it was called still runs, or false when ctx ends first.
func (g *claimGates) wait(ctx context.Context, serverID string) bool {
	e := g.ref(serverID, false)
	if e == nil {
		return true
	}
	defer g.unref(serverID, e)
	select {
	case e.turn <- struct{}{}:
		<-e.turn
		return true
	case <-ctx.Done():
		return false
	}
}

// size is the number of gates (tests: every gate is freed).
func (g *claimGates) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.gates)
}
