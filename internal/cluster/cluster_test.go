package cluster_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// A binary on each instance, a phone of each on each other instance: every
// frame crosses instances, both ways, in order, exactly once.
func TestCluster_CrossInstance_BothWays_OrderExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	const n = 400
	var wg sync.WaitGroup
	for i, owner := range e.relays {
		sid := newID("x")
		b := binaryAt(t, owner, sid)
		type ph struct {
			c  *conn
			id string
		}
		var phones []ph
		for j, home := range e.relays {
			if j == i {
				continue
			}
			p := phoneAt(t, home, sid)
			phones = append(phones, ph{p, hello(t, b, p)})
		}
		for _, p := range phones {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < n; k++ {
					if err := p.c.trySend(map[string]any{"k": k}); err != nil {
						t.Errorf("phone send: %v", err)
						return
					}
				}
			}()
		}
		// The binary sees each phone's frames in order, exactly once, then
		// answers with n frames of its own.
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := map[string]int{}
			for total := 0; total < n*len(phones); total++ {
				m, err := b.next(10 * time.Second)
				if err != nil {
					t.Errorf("binary %d: after %d frames: %v", i, total, err)
					return
				}
				var env envelope
				var f struct{ K int }
				if json.Unmarshal(m, &env) != nil || json.Unmarshal(env.Frame, &f) != nil || f.K != got[env.ConnID] {
					t.Errorf("binary %d: out of order or duplicate: %s (want k=%d)", i, m, got[env.ConnID])
					return
				}
				got[env.ConnID]++
			}
			for _, p := range phones {
				for k := 0; k < n; k++ {
					if err := b.trySend(map[string]any{"conn_id": p.id, "frame": map[string]any{"k": k}}); err != nil {
						t.Errorf("binary send: %v", err)
						return
					}
				}
			}
		}()
		for _, p := range phones {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; k < n; k++ {
					m, err := p.c.next(10 * time.Second)
					if err != nil {
						t.Errorf("phone %s: frame %d: %v", p.id, k, err)
						return
					}
					var f struct{ K int }
					if json.Unmarshal(m, &f) != nil || f.K != k {
						t.Errorf("phone %s: got %s, want k=%d", p.id, m, k)
						return
					}
				}
				if _, err := p.c.next(200 * time.Millisecond); err != errTimeout {
					t.Errorf("phone %s: a frame beyond the %d sent (duplicate?): %v", p.id, n, err)
				}
			}()
		}
	}
	wg.Wait()
}

// A second binary for a server-id held by a live binary on another
// instance gets 4409; the incumbent keeps its slot and its phones.
func TestCluster_CrossInstanceConflict_4409(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("conflict")
	bin := binaryAt(t, a, sid)
	p := phoneAt(t, c, sid)
	id := hello(t, bin, p)
	squatter := binaryAt(t, b, sid)
	require.Equal(t, websocket.StatusCode(4409), squatter.closeCode(t, 5*time.Second))
	roundTrip(t, bin, p, id)
	require.True(t, bin.isOpen(100*time.Millisecond))
}

// A conflicting claim whose incumbent is dead (stopped answering pings)
// takes over across instances: old binary 1011, its phones 4404 wherever
// they are, the newcomer holds the slot.
func TestCluster_CrossInstanceTakeover_DeadIncumbent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3, "--ping-interval", "1h")
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("takeover")
	old := binaryAt(t, a, sid)
	pa := phoneAt(t, a, sid)
	pc := phoneAt(t, c, sid)
	hello(t, old, pa)
	hello(t, old, pc)
	// Stop the old binary's reader: it can no longer answer pings (the
	// WebSocket library answers pings only while reading). The reader
	// stops after one more message.
	old.paused.Store(true)
	pa.send(t, map[string]any{"last": true})
	time.Sleep(200 * time.Millisecond)
	nb, code := tryBinary(t, b, sid, 1500*time.Millisecond)
	require.Zero(t, code, "the newcomer should replace a dead incumbent")
	require.Equal(t, websocket.StatusCode(4404), pa.closeCode(t, 5*time.Second))
	require.Equal(t, websocket.StatusCode(4404), pc.closeCode(t, 5*time.Second))
	p := phoneAt(t, c, sid)
	roundTrip(t, nb, p, hello(t, nb, p))
}

// 16 phones spread over the three instances fill the slot; a 17th on any
// instance gets 4429 from the owner.
func TestCluster_MaxPhonesAcrossInstances_4429(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	sid := newID("cap")
	b := binaryAt(t, e.relays[0], sid)
	var phones []*conn
	for i := 0; i < 16; i++ {
		p := phoneAt(t, e.relays[i%3], sid)
		hello(t, b, p)
		phones = append(phones, p)
	}
	for _, in := range e.relays {
		extra := phoneAt(t, in, sid)
		require.Equal(t, websocket.StatusCode(4429), extra.closeCode(t, 5*time.Second), "17th phone on %s", in.id)
	}
	// One leaves (on a remote instance): its place is free again, and the
	// binary got its close notice.
	require.NoError(t, phones[1].ws.Close(websocket.StatusNormalClosure, ""))
	ev := b.nextEnvelope(t, 5*time.Second)
	require.Equal(t, 1000, ev.CloseCode)
	p := phoneAt(t, e.relays[2], sid)
	hello(t, b, p)
}

// Binaries of two tenants on different instances, phones of both spread
// over all three, with server-ids that differ only by '~' and '.': each
// binary reaches only its own phones, even addressing the other's conn_ids.
func TestCluster_CrossTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	// The two ids differ only in '~' versus '.', the look-alike pair a
	// careless KV key encoding would collapse into one key.
	s1 := "tenant~" + newID("iso")
	s2 := "tenant." + s1[len("tenant~"):]
	b1 := binaryAt(t, e.relays[0], s1)
	b2 := binaryAt(t, e.relays[1], s2)
	var p1, p2 []*conn
	var id1, id2 []string
	for _, in := range e.relays {
		p := phoneAt(t, in, s1)
		p1 = append(p1, p)
		id1 = append(id1, hello(t, b1, p))
		q := phoneAt(t, in, s2)
		p2 = append(p2, q)
		id2 = append(id2, hello(t, b2, q))
	}
	// b2 addresses tenant 1's phones by their conn_ids; b1 likewise.
	for _, id := range id1 {
		b2.send(t, map[string]any{"conn_id": id, "frame": map[string]any{"leak": "from-b2"}})
	}
	for _, id := range id2 {
		b1.send(t, map[string]any{"conn_id": id, "frame": map[string]any{"leak": "from-b1"}})
	}
	// Then each binary sends its own phones a marker: the marker must be
	// the first thing each phone sees.
	for i, id := range id1 {
		b1.send(t, map[string]any{"conn_id": id, "frame": map[string]any{"own": "b1"}})
		m, err := p1[i].next(5 * time.Second)
		require.NoError(t, err)
		require.JSONEq(t, `{"own":"b1"}`, string(m))
	}
	for i, id := range id2 {
		b2.send(t, map[string]any{"conn_id": id, "frame": map[string]any{"own": "b2"}})
		m, err := p2[i].next(5 * time.Second)
		require.NoError(t, err)
		require.JSONEq(t, `{"own":"b2"}`, string(m))
	}
	for _, p := range append(p1, p2...) {
		_, err := p.next(200 * time.Millisecond)
		require.ErrorIs(t, err, errTimeout, "no foreign frame may arrive")
	}
	_, err := b1.next(100 * time.Millisecond)
	require.ErrorIs(t, err, errTimeout)
	_, err = b2.next(100 * time.Millisecond)
	require.ErrorIs(t, err, errTimeout)
	_ = fmt.Sprint()
}
