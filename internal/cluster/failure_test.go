package cluster_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// kill -9 of the owner: its claim outlives it by at most the lease. Until
// then a claim elsewhere is refused 1013 (the owner cannot be asked, and a
// newcomer must not take a slot a live binary may hold); its phones on the
// other instances are closed 1011 once the owner stops answering; after
// the lease the server-id is claimed on another instance and works.
func TestCluster_KillOwner_LeaseExpiry_ReclaimElsewhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("kill")
	bin := binaryAt(t, a, sid)
	p := phoneAt(t, b, sid)
	hello(t, bin, p)

	a.proc.Kill() // SIGKILL: no shutdown, no release
	killed := time.Now()
	// At once: the claim is still the dead owner's (its lease runs).
	first := dialBinary(t, c, sid)
	require.Equal(t, websocket.StatusCode(1013), first.closeCode(t, 10*time.Second), "claim while the crashed owner's lease runs")

	var nb *conn
	require.True(t, pollUntil(lease+5*time.Second, func() bool {
		nb, _ = tryBinary(t, c, sid, 300*time.Millisecond)
		return nb != nil
	}), "no claim on another instance within lease+5s of the kill")
	took := time.Since(killed)
	require.Less(t, took, lease+5*time.Second)
	t.Logf("reclaimed %v after kill -9 (lease %v)", took.Round(10*time.Millisecond), lease)
	// The dead owner's phone elsewhere was closed: 1011 when its instance
	// stopped answering pings, or 4404 when the claim was found gone.
	code := p.closeCode(t, 5*time.Second)
	require.Contains(t, []websocket.StatusCode{1011, 4404}, code, "a phone of a crashed owner")
	q := phoneAt(t, b, sid)
	roundTrip(t, nb, q, hello(t, nb, q))
}

// Grace across instances: the owner's binary leaves, its phones (on the
// owner and elsewhere) stay for --grace-period; the binary reconnects on
// another instance and takes the slot, evicting them 4404 wherever they
// are. A slot nobody reclaims ends after the grace period, 4404 too.
func TestCluster_GraceReclaimAcrossInstances(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("grace")
	bin := binaryAt(t, a, sid)
	pa, pb := phoneAt(t, a, sid), phoneAt(t, b, sid)
	hello(t, bin, pa)
	hello(t, bin, pb)
	require.NoError(t, bin.ws.Close(websocket.StatusNormalClosure, ""))
	require.True(t, pa.isOpen(300*time.Millisecond), "phones stay during grace")
	require.True(t, pb.isOpen(10*time.Millisecond))
	nb, code := tryBinary(t, c, sid, 500*time.Millisecond)
	require.Zero(t, code, "reclaim on another instance during grace")
	require.Equal(t, websocket.StatusCode(4404), pa.closeCode(t, 3*time.Second))
	require.Equal(t, websocket.StatusCode(4404), pb.closeCode(t, 3*time.Second))
	q := phoneAt(t, a, sid)
	roundTrip(t, nb, q, hello(t, nb, q))

	// Grace expiry: nobody reclaims.
	sid2 := newID("expire")
	bin2 := binaryAt(t, b, sid2)
	r1, r2 := phoneAt(t, a, sid2), phoneAt(t, c, sid2)
	hello(t, bin2, r1)
	hello(t, bin2, r2)
	require.NoError(t, bin2.ws.Close(websocket.StatusNormalClosure, ""))
	start := time.Now()
	require.Equal(t, websocket.StatusCode(4404), r1.closeCode(t, grace+3*time.Second))
	require.Equal(t, websocket.StatusCode(4404), r2.closeCode(t, 3*time.Second))
	require.GreaterOrEqual(t, time.Since(start), grace-200*time.Millisecond, "evicted before the grace period ended")
	// The claim is gone with the slot: a phone anywhere gets 4404, a binary
	// anywhere claims at once.
	late := phoneAt(t, c, sid2)
	require.Equal(t, websocket.StatusCode(4404), late.closeCode(t, 3*time.Second))
	_, code = tryBinary(t, a, sid2, 300*time.Millisecond)
	require.Zero(t, code)
}

// NATS stopped: a pair on one instance keeps working; a remote join and a
// new claim are refused 1013; cross-instance phones are closed 1011 (their
// frames may be lost), never 4404; when NATS is back the cluster recovers
// by itself and the owner kept its claim.
func TestCluster_NATSStopped_LocalPairsWork_RemoteRefused_Recovers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("down")
	bin := binaryAt(t, a, sid)
	local := phoneAt(t, a, sid)
	remote := phoneAt(t, b, sid)
	lid := hello(t, bin, local)
	hello(t, bin, remote)

	e.nats.Stop()
	require.Equal(t, websocket.StatusCode(1011), remote.closeCode(t, 5*time.Second), "cross-instance phone when NATS goes")
	ev := bin.nextEnvelope(t, 5*time.Second) // its close notice
	require.Equal(t, 1011, ev.CloseCode)
	roundTrip(t, bin, local, lid)
	refused := phoneAt(t, b, sid)
	require.Equal(t, websocket.StatusCode(1013), refused.closeCode(t, 10*time.Second), "remote join without NATS")
	nbin := dialBinary(t, c, newID("down-new"))
	require.Equal(t, websocket.StatusCode(1013), nbin.closeCode(t, 10*time.Second), "new claim without NATS")
	roundTrip(t, bin, local, lid)
	require.True(t, local.isOpen(2*lease), "no 4404 for local phones while NATS is away (longer than the lease)")

	require.NoError(t, e.nats.Restart())
	var p *conn
	require.True(t, pollUntil(15*time.Second, func() bool {
		p = phoneAt(t, b, sid)
		return p.isOpen(300 * time.Millisecond)
	}), "remote join did not recover after NATS came back")
	roundTrip(t, bin, p, hello(t, bin, p))
	roundTrip(t, bin, local, lid)
	// The owner kept its claim: a claim elsewhere is a conflict.
	squatter := dialBinary(t, c, sid)
	require.Equal(t, websocket.StatusCode(4409), squatter.closeCode(t, 5*time.Second))
}

// NATS restarted in the middle of traffic: every frame either arrives in
// order exactly once, or its phone is closed 1011 (never a silent gap or a
// duplicate); the pair on one instance loses nothing.
func TestCluster_NATSRestartMidTraffic_NothingLostSilently(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2)
	a, b := e.relays[0], e.relays[1]
	sid := newID("restart")
	bin := binaryAt(t, a, sid)
	local := phoneAt(t, a, sid)
	remote := phoneAt(t, b, sid)
	lid := hello(t, bin, local)
	rid := hello(t, bin, remote)

	const n = 3000
	sent := make(chan int, 1)
	go func() { // the binary streams to both phones while NATS restarts
		i := 0
		for ; i < n; i++ {
			if i == n/3 {
				e.nats.Stop()
				go func() { time.Sleep(300 * time.Millisecond); _ = e.nats.Restart() }()
			}
			for _, id := range []string{lid, rid} {
				if bin.trySend(map[string]any{"conn_id": id, "frame": map[string]any{"k": i}}) != nil {
					sent <- i
					return
				}
			}
			if i%100 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
		sent <- i
	}()
	check := func(p *conn, mayClose bool) (got int, code websocket.StatusCode) {
		for {
			m, err := p.next(5 * time.Second)
			if err != nil {
				select {
				case <-p.closed:
					return got, p.code
				default:
					return got, 0
				}
			}
			var f struct{ K int }
			require.NoError(t, json.Unmarshal(m, &f))
			require.Equal(t, got, f.K, "frame out of order, duplicated or skipped")
			got++
			if got == n {
				return got, 0
			}
		}
	}
	gotLocal, codeLocal := check(local, false)
	require.Equal(t, n, gotLocal, "the pair on one instance lost frames (closed %d)", codeLocal)
	gotRemote, codeRemote := check(remote, true)
	require.Equal(t, n, <-sent)
	if gotRemote < n {
		require.Equal(t, websocket.StatusCode(1011), codeRemote, "cross-instance phone got %d of %d frames without being closed 1011", gotRemote, n)
	}
	t.Logf("cross-instance phone: %d of %d frames, then close %d", gotRemote, n, codeRemote)
}
