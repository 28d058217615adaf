package cluster_test

import (
	"flag"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"pgregory.net/rapid"
)

// TestCluster_Property_IsolationOrderExactlyOnce drives random joins,
// leaves, frames both ways and binary moves (a reclaim on another instance
// during grace) for two tenants over three real instances, and checks after
// every step that each frame reached exactly its addressee, once, in order:
// a phone's frames reach only its own binary, in the order sent; a binary's
// frames reach only the phone it addressed; a phone that leaves produces
// exactly one close notice at its binary; a moved binary's phones are
// closed 4404 and nothing else is delivered to anyone.
func TestCluster_Property_IsolationOrderExactlyOnce(t *testing.T) {
	// Every check dials real sockets to real processes: 25 checks (not
	// rapid's default 100) keep this near 10 s; -rapid.checks=N overrides.
	if f := flag.Lookup("rapid.checks"); f != nil && f.Value.String() == f.DefValue {
		_ = f.Value.Set("25")
		defer func() { _ = f.Value.Set(f.DefValue) }()
	}
	e := newEnv(t, 3)
	type phone struct {
		c  *conn
		id string
	}
	type tenant struct {
		sid    string
		bin    *conn
		at     int
		phones []*phone
	}
	quiet := func(t *rapid.T, what string, c *conn) {
		if m, err := c.next(30 * time.Millisecond); err == nil {
			t.Fatalf("%s got an unexpected message: %s", what, m)
		}
	}
	rapid.Check(t, func(rt *rapid.T) {
		var ts [2]*tenant
		for k := range ts {
			at := rapid.IntRange(0, 2).Draw(rt, "binary-at")
			sid := newID(fmt.Sprintf("prop%d", k))
			ts[k] = &tenant{sid: sid, at: at, bin: binaryAt(t, e.relays[at], sid)}
		}
		seq := 0
		steps := rapid.IntRange(1, 12).Draw(rt, "steps")
		for s := 0; s < steps; s++ {
			tn := ts[rapid.IntRange(0, 1).Draw(rt, "tenant")]
			other := ts[0]
			if other == tn {
				other = ts[1]
			}
			switch op := rapid.IntRange(0, 4).Draw(rt, "op"); {
			case op == 0 || len(tn.phones) == 0: // join
				if len(tn.phones) >= 4 {
					continue
				}
				at := rapid.IntRange(0, 2).Draw(rt, "phone-at")
				c := phoneAt(t, e.relays[at], tn.sid)
				seq++
				if err := c.trySend(map[string]any{"hello": seq}); err != nil {
					rt.Fatalf("join on %d: %v", at, err)
				}
				env := tn.bin.nextEnvelope(t, 5*time.Second)
				if string(env.Frame) != fmt.Sprintf(`{"hello":%d}`, seq) {
					rt.Fatalf("binary of %s got %s, want hello %d", tn.sid, env.Frame, seq)
				}
				tn.phones = append(tn.phones, &phone{c: c, id: env.ConnID})
			case op == 1: // phone -> binary
				p := tn.phones[rapid.IntRange(0, len(tn.phones)-1).Draw(rt, "phone")]
				n := rapid.IntRange(1, 5).Draw(rt, "frames")
				for i := 0; i < n; i++ {
					seq++
					if err := p.c.trySend(map[string]any{"up": seq}); err != nil {
						rt.Fatalf("phone send: %v", err)
					}
					env := tn.bin.nextEnvelope(t, 5*time.Second)
					if env.ConnID != p.id || string(env.Frame) != fmt.Sprintf(`{"up":%d}`, seq) {
						rt.Fatalf("binary got %s from %s, want up %d from %s", env.Frame, env.ConnID, seq, p.id)
					}
				}
				quiet(rt, "other tenant's binary", other.bin)
			case op == 2: // binary -> phone, and a frame at the other tenant's phone's conn_id
				p := tn.phones[rapid.IntRange(0, len(tn.phones)-1).Draw(rt, "phone")]
				if len(other.phones) > 0 {
					tn.bin.send(t, map[string]any{"conn_id": other.phones[0].id, "frame": map[string]any{"foreign": true}})
				}
				n := rapid.IntRange(1, 5).Draw(rt, "frames")
				for i := 0; i < n; i++ {
					seq++
					tn.bin.send(t, map[string]any{"conn_id": p.id, "frame": map[string]any{"down": seq}})
				}
				for i := seq - n + 1; i <= seq; i++ {
					m, err := p.c.next(5 * time.Second)
					if err != nil || string(m) != fmt.Sprintf(`{"down":%d}`, i) {
						rt.Fatalf("phone %s: got %s (%v), want down %d", p.id, m, err, i)
					}
				}
				for _, q := range append(append([]*phone{}, tn.phones...), other.phones...) {
					quiet(rt, "phone "+q.id, q.c)
				}
			case op == 3: // a phone leaves: exactly one close notice
				k := rapid.IntRange(0, len(tn.phones)-1).Draw(rt, "phone")
				p := tn.phones[k]
				tn.phones = append(tn.phones[:k], tn.phones[k+1:]...)
				_ = p.c.ws.Close(websocket.StatusNormalClosure, "")
				env := tn.bin.nextEnvelope(t, 5*time.Second)
				if env.ConnID != p.id || env.CloseCode != 1000 {
					rt.Fatalf("close notice: got %+v, want %s 1000", env, p.id)
				}
				quiet(rt, "binary after notice", tn.bin)
			case op == 4: // the binary moves to another instance (reclaim during grace)
				_ = tn.bin.ws.Close(websocket.StatusNormalClosure, "")
				at := (tn.at + rapid.IntRange(1, 2).Draw(rt, "move")) % 3
				nb := binaryAt(t, e.relays[at], tn.sid)
				select {
				case <-nb.closed:
					rt.Fatalf("reclaim on %d refused %d", at, nb.code)
				default:
				}
				for _, p := range tn.phones {
					if code := p.c.closeCode(t, 5*time.Second); code != 4404 {
						rt.Fatalf("phone of a moved binary closed %d, want 4404", code)
					}
				}
				tn.bin, tn.at, tn.phones = nb, at, nil
			}
		}
		for _, tn := range ts {
			_ = tn.bin.ws.Close(websocket.StatusNormalClosure, "")
			for _, p := range tn.phones {
				_ = p.c.ws.Close(websocket.StatusNormalClosure, "")
			}
		}
	})
}
