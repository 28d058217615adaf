package relay

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// Issue 24: the claim path is as tenant-isolated as one instance, and a
// binary's 101 means its server-id is held.

// stripeOf is the stripe a server-id had among the 64 shared claim locks
// the relay used before per-server-id gates (fnv-32a modulo 64).
func stripeOf(id string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return h.Sum32() % 64
}

// Defect 1: a tenant that holds its server-id with a binary that never
// answers pings, and claims it again and again, made every server-id that
// shared its lock stripe wait about one probe timeout per queued claim
// (4.9 s for 5 re-claims at a 1 s probe timeout). Claims of another
// server-id now go ahead at once, whatever its hash.
func TestClusterClaim_HostileReclaimsDoNotDelayAnotherServerID(t *testing.T) {
	const probe = 500 * time.Millisecond
	h := newClusterHarness(t, func(o *Options) { o.ProbeTimeout = probe }, &fakeBackplane{})
	hostile := "hostile-tenant"
	victim := ""
	for i := 0; victim == ""; i++ {
		if id := fmt.Sprintf("victim-%d", i); stripeOf(id) == stripeOf(hostile) {
			victim = id
		}
	}
	dialSilent := func(id string) {
		// Never reads: never answers a ping, so every re-claim probes it
		// for the whole probe timeout before it takes over.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, _, err := websocket.Dial(ctx, h.ws+"/v1/server", &websocket.DialOptions{HTTPHeader: binaryHeaders(id)}); err == nil {
			t.Cleanup(func() { _ = c.CloseNow() })
		}
	}
	dialSilent(hostile)
	h.eventually(func() bool { _, held := h.rl.reg.holder(hostile); return held }, "the hostile binary never claimed")
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() { defer wg.Done(); dialSilent(hostile) }()
	}
	t.Cleanup(wg.Wait)
	time.Sleep(100 * time.Millisecond) // the re-claims are probing or queued

	start := time.Now()
	h.connect("/v1/server", binaryHeaders(victim), true) // its 101 comes once its claim has its turn
	h.eventually(func() bool { b, _ := h.rl.reg.holder(victim); return b != nil }, "the other server-id was never claimed")
	// Behind 5 queued probes it would wait about 2.5 s; a claim on its own
	// takes milliseconds, 1 s on a loaded machine.
	require.Less(t, time.Since(start), 2*probe, "another server-id's claim waited behind the hostile tenant's probes")
}

// blockFirstWrite is the relay's end of a connection whose first write (the
// 101) reaches the client, after which the writer is held until release:
// the moment between a binary's 101 and whatever the relay does next.
type blockFirstWrite struct {
	net.Conn
	once    sync.Once
	release chan struct{}
}

func (c *blockFirstWrite) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.once.Do(func() { <-c.release })
	return n, err
}

// Defect 10 (one instance): the relay sent a binary its 101 before it
// recorded the claim, so a phone joining right after could be refused 4404
// (2 of 250 immediate joins on an idle relay). Once the 101 is out, the
// server-id is held: a phone that finds no slot waits for the claim.
func TestClaim_PhoneJoiningRightAfterTheBinarys101_FindsItHeld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		n := 0
		h := newMemHarnessWrap(t, nil, func(c net.Conn) net.Conn {
			if n++; n == 1 { // the binary's connection
				return &blockFirstWrite{Conn: c, release: release}
			}
			return c
		})
		let := sync.OnceFunc(func() { close(release) })
		t.Cleanup(let)
		bin := h.connect("/v1/server", binaryHeaders(sid), true) // has its 101
		phone := h.connect("/v1/client", phoneHeaders(sid), true)
		synctest.Wait()
		select {
		case err := <-phone.end:
			t.Fatalf("phone refused right after the binary's 101: %v", err)
		default:
		}
		let()
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Phones, "the phone is not in the slot")
		phone.send(`{"type":"hello"}`)
		require.JSONEq(t, `{"type":"hello"}`, string(bin.envelope().Frame))
		require.Zero(t, h.rl.gates.size(), "a claim gate outlived its claim")
	})
}

// Chaos finding 10 (seed 734334, one instance or a cluster): a phone that
// joined a slot in grace after the reclaiming binary's 101 but before its
// claim was installed (in a cluster the store is asked after the 101 when
// the slot here is in grace) was in the slot the claim then took, and was
// evicted 4404. It now waits for the claim and joins the new binary.
func TestClaim_PhoneJoiningAGraceSlotAfterTheReclaimers101_FindsTheNewBinary(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(map[bool]string{false: "one instance", true: "cluster"}[cluster], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				n := 0
				wrap := func(c net.Conn) net.Conn {
					if n++; n == 2 { // the reclaiming binary's connection
						return &blockFirstWrite{Conn: c, release: release}
					}
					return c
				}
				var h *harness
				if cluster {
					h = newMemHarnessWith(t, nil, wrap, &fakeBackplane{})
				} else {
					h = newMemHarnessWrap(t, nil, wrap)
				}
				let := sync.OnceFunc(func() { close(release) })
				t.Cleanup(let)
				old := h.connect("/v1/server", binaryHeaders(sid), true)
				require.NoError(t, old.c.Close(websocket.StatusNormalClosure, ""))
				synctest.Wait()
				require.Equal(t, 1, h.rl.Stats().Grace, "the slot is not in grace")
				bin := h.connect("/v1/server", binaryHeaders(sid), true) // has its 101
				phone := h.connect("/v1/client", phoneHeaders(sid), true)
				synctest.Wait()
				let()
				synctest.Wait()
				select {
				case err := <-phone.end:
					t.Fatalf("phone that joined after the reclaiming binary's 101 was closed: %v", err)
				default:
				}
				require.Equal(t, 1, h.rl.Stats().Phones, "the phone is not in the slot")
				phone.send(`{"type":"hello"}`)
				require.JSONEq(t, `{"type":"hello"}`, string(bin.envelope().Frame))
				require.Zero(t, h.rl.gates.size(), "a claim gate outlived its claim")
			})
		})
	}
}

// dialBinaryInBackground dials a binary for id that reads (and so answers
// pings) once upgraded, without waiting for its 101: the returned channel
// is closed when the dial has returned.
func (h *harness) dialBinaryInBackground(id string) <-chan struct{} {
	upgraded := make(chan struct{})
	go func() {
		defer close(upgraded)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, _, err := websocket.Dial(ctx, h.ws+"/v1/server", &websocket.DialOptions{HTTPHeader: binaryHeaders(id), HTTPClient: h.client})
		if err != nil {
			return
		}
		go func() {
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		h.t.Cleanup(func() { _ = c.CloseNow() })
	}()
	return upgraded
}

// gatedBackplane is fakeBackplane whose Acquire waits for release.
type gatedBackplane struct {
	fakeBackplane
	acquiring chan struct{} // closed when Acquire is called
	once      sync.Once
	release   chan struct{}
}

func (g *gatedBackplane) Acquire(ctx context.Context, id string) (ClaimOutcome, error) {
	g.once.Do(func() { close(g.acquiring) })
	<-g.release
	return ClaimGranted, nil
}

// Defect 10 (cluster): phones on other instances learn who holds a
// server-id from the cluster's store, so the store must have the claim
// before the binary's 101; and a join that reaches this instance while
// the claim is being installed waits for it instead of 4404.
func TestClusterClaim_StoreHasTheClaimBefore101_JoinsWaitForIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bp := &gatedBackplane{acquiring: make(chan struct{}), release: make(chan struct{})}
		h := newMemHarnessWith(t, nil, nil, bp)
		let := sync.OnceFunc(func() { close(bp.release) })
		t.Cleanup(let)
		upgraded := h.dialBinaryInBackground(sid)
		<-bp.acquiring
		admitted := make(chan int, 1)
		go func() { _, code := h.rl.AdmitRemote("home", sid); admitted <- code }()
		synctest.Wait()
		select {
		case <-upgraded:
			t.Fatal("the binary had its 101 before the cluster's store had its claim")
		default:
		}
		select {
		case code := <-admitted:
			t.Fatalf("a remote join during the claim was answered %d before the claim's outcome", code)
		default:
		}
		let()
		synctest.Wait()
		<-upgraded
		require.Equal(t, 0, <-admitted, "the remote join was refused")
		require.Equal(t, 1, h.rl.Stats().Binaries)
		require.Equal(t, 1, h.rl.Stats().Phones)
	})
}

// A claim here that has won the store but is still deciding when another
// instance's probe gives up waiting for it (its 101 may wait for the old
// owner's answer: tellReplaced) is not an absent binary: an "absent"
// answer let the prober take the server-id over by a takeover, and the
// binary here, installed a moment later, was replaced 1011 (seen at load in
// TestCluster_ConcurrentReclaimsOfAGraceSlot_OneWinner, where the loser
// must get 4409). The probe answers live: a binary is being installed.
func TestProbe_ClaimStillInProgressHere_IsNotAbsent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bp := &gatedBackplane{acquiring: make(chan struct{}), release: make(chan struct{})}
		h := newMemHarnessWith(t, nil, nil, bp)
		let := sync.OnceFunc(func() { close(bp.release) })
		t.Cleanup(let)
		h.dialBinaryInBackground(sid)
		<-bp.acquiring
		start := time.Now()
		require.Equal(t, ProbeLive, h.rl.Probe(sid), "a claim in progress here was reported absent: a rival elsewhere may take it over")
		require.GreaterOrEqual(t, time.Since(start), h.rl.opts.ProbeTimeout, "the probe did not wait for the claim in progress")
		let()
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Binaries)
		require.Equal(t, ProbeLive, h.rl.Probe(sid))
	})
}

// heldAcquire is fakeBackplane whose Acquire, once hold is set, waits for
// the channel it holds to close (earlier claims go through at once).
type heldAcquire struct {
	fakeBackplane
	hold      atomic.Pointer[chan struct{}]
	acquiring chan struct{} // closed by the first held Acquire
	once      sync.Once
}

func (g *heldAcquire) Acquire(ctx context.Context, id string) (ClaimOutcome, error) {
	if ch := g.hold.Load(); ch != nil {
		g.once.Do(func() { close(g.acquiring) })
		<-*ch
	}
	return ClaimGranted, nil
}

// CI, TestCluster_ConcurrentReclaimsOfAGraceSlot_OneWinner: the owner's
// binary came back for its grace slot, and while that claim was between
// its store write and its install, another instance's claim probed the
// owner, found the slot still in grace and was told "dead" (a grace slot
// is reclaimable): it took the server-id over, and the binary the owner
// installed a moment later was replaced 1011 where the rival should have
// got 4409. A probe that finds a grace slot with a claim in progress here
// waits for that claim, as one finding no slot does.
func TestProbe_GraceSlotWithAReclaimInProgressHere_WaitsForIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		bp := &heldAcquire{acquiring: make(chan struct{})}
		h := newMemHarnessWith(t, nil, nil, bp)
		old := h.connect("/v1/server", binaryHeaders(sid), true)
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Binaries)
		require.NoError(t, old.c.Close(websocket.StatusNormalClosure, ""))
		synctest.Wait()
		require.Equal(t, 1, h.rl.Stats().Grace, "the slot is not in grace")
		release := make(chan struct{})
		let := sync.OnceFunc(func() { close(release) })
		t.Cleanup(let)
		bp.hold.Store(&release)
		bin := h.connect("/v1/server", binaryHeaders(sid), true) // the reclaim, held in Acquire
		<-bp.acquiring
		probed := make(chan ProbeResult, 1)
		go func() { probed <- h.rl.Probe(sid) }()
		synctest.Wait()
		select {
		case res := <-probed:
			t.Fatalf("the probe answered %d while a reclaim of the grace slot was in progress here", res)
		default:
		}
		let()
		synctest.Wait()
		require.Equal(t, ProbeLive, <-probed, "the reclaiming binary, installed, is live")
		bin.silent(time.Millisecond)
	})
}

// Defect 2: another instance's claim probes the owner's binary (Probe);
// it used a plain ping where a rival on the same instance counts "still
// taking bytes" as alive, so a slow but live binary was dead to rivals
// elsewhere (a 1011 takeover where a local rival gets 4409). One rule now.
func TestProbe_SlowButLiveBinary_LiveToRemoteRivalAsToLocalOne(t *testing.T) {
	h := newClusterHarness(t, func(o *Options) {
		o.ProbeTimeout = 300 * time.Millisecond
		o.MaxMessageBytes = 64 << 10
		o.PhoneQueueBytes = 1 << 20
	}, &fakeBackplane{})
	bin := h.dialSlowBinary(sid, 100*time.Millisecond)
	stop := make(chan struct{})
	defer close(stop)
	h.floodFromPhones(sid, 2, 15<<10, stop)
	h.eventually(func() bool { return bin.got.Load() > 3 }, "the binary was not fed")

	for i := range 3 {
		require.Equalf(t, ProbeLive, h.rl.Probe(sid), "probe %d from another instance called the slow binary dead", i)
	}
	rival := h.connect("/v1/server", binaryHeaders(sid), true)
	rival.closed(CodeConflict)
	select {
	case err := <-bin.end:
		t.Fatalf("slow binary closed: %v", err)
	default:
	}
}
