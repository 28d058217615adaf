// Package cluster joins several `relay serve` processes into one logical
// relay over NATS: a JetStream KV bucket holds who owns each server-id
// (claims.go), core NATS subjects carry frames between instances
// (subjects.go, wire.go). It implements relay.Backplane; the routing core
// stays in internal/relay. docs/cluster.md is the design and wire reference.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pyrycode/relay/internal/metrics"
	"github.com/pyrycode/relay/internal/relay"
)

// Options configure cluster mode. The zero value of a field is its default.
type Options struct {
	// URLs are the NATS servers (nats:// or tls://), comma-separated on the
	// command line. Empty means single-instance mode: nothing here runs.
	URLs []string
	// CredsFile is a NATS .creds file (JWT + nkey seed) for this instance.
	// Give every instance its own, with publish permissions limited to
	// subjects ending in its own id (docs/cluster.md): NATS then vouches for
	// the sender of every message, so one compromised instance cannot speak
	// as another.
	CredsFile string
	// CAFile is a PEM bundle to verify the NATS servers' TLS certificates;
	// setting it requires TLS. A compromised or sniffed NATS link sees every
	// frame (end-to-end encrypted by the apps, but still metadata), so run
	// NATS with TLS and credentials anywhere but loopback.
	CAFile string
	// Name prefixes every subject and the claims bucket, so two clusters can
	// share one NATS account. Default "relay".
	Name string
	// InstanceID names this instance in subjects and claims; default a
	// random id, logged at start. Ids must be unique within the cluster.
	InstanceID string
	// Lease is how long an instance's claims outlive its last heartbeat:
	// each instance rewrites its session key every Lease/3, and another
	// instance judges it dead, and may take its server-ids, once it has
	// seen no heartbeat for a Lease (session.go). So a crashed instance's
	// server-ids are claimable again between Lease×2/3 and Lease after the
	// crash, and a NATS blip shorter than about Lease×2/3 changes nothing.
	// Shorter frees a dead owner's slots sooner and costs more session
	// writes (one per Lease/3 per instance, whatever it owns); longer lets
	// longer blips pass. Use the same value on every instance. Default
	// 2.4s, at least MinLease (1s).
	Lease time.Duration
	// Replicas of the claims bucket: 3 on a 3-node NATS cluster, so a NATS
	// node's loss keeps the claims. Default 1.
	Replicas int
	// MaxPendingBytes bounds what the NATS client buffers for this
	// instance's incoming cross-instance frames before the relay has read
	// them, on top of --max-queued-bytes. Past it NATS drops messages (a
	// slow consumer): detected, counted, and answered by closing every
	// cross-instance phone of this instance 1011 with close notices. A
	// message larger than the bound is always dropped that way, so keep it
	// well above --max-message-bytes. Default 64 MiB.
	MaxPendingBytes int
	// MaxLinkPayload is the largest link message this instance may publish
	// (LinkPayload of the relay's message and token bounds), set by the
	// server from the relay's options, not by a flag. NATS refuses a
	// message over its max_payload, which would close that phone 1011: a
	// cluster whose NATS is configured smaller refuses to start
	// (ErrNATSPayloadTooSmall) and a server met later with a smaller one is
	// logged. Zero skips the check.
	MaxLinkPayload int64
}

// linkHeaderMax bounds a link message's bytes besides its frame and token:
// version, kind and flags (3), seq and code (varints, at most 10 each), the
// server-id (at most 128 bytes, relay.ValidServerID) and the conn_id (at
// most 64), each with its length varint, and the token's length varint.
const linkHeaderMax = 3 + 10 + 10 + (2 + 128) + (2 + 64) + 3

// LinkPayload is the largest link message for frames of up to maxMessage
// bytes and a forwarded token of up to maxToken bytes (0 when tokens are
// not forwarded).
func LinkPayload(maxMessage int64, maxToken int) int64 {
	return maxMessage + int64(maxToken) + linkHeaderMax
}

// Defaults.
const (
	DefaultName  = "relay"
	DefaultLease = 2400 * time.Millisecond
	// MinLease is the shortest --cluster-lease: a session must survive the
	// ordinary delays of a busy host and of NATS between two refreshes
	// (lease/3 apart). At 300 ms a live owner's claim lapsed on a loaded
	// 2-core machine (TestCluster_LiveOwnersClaim_NeverLapses_AtTheMinimumLease,
	// 1 run in 6 at load 10-15).
	MinLease = time.Second
	// requestTimeout bounds a join or store operation.
	requestTimeout = 3 * time.Second
	// A silent partition (packets held, no reset) is detected by NATS's
	// own pings: one every natsPingInterval, and the connection is given
	// up once more than natsMaxPingsOut are unanswered, so within
	// (natsMaxPingsOut+1) x natsPingInterval = 3 s of the last answer
	// (docs/cluster.md, failure behaviour). nats.go's defaults (2 minutes)
	// would leave cross-instance phones silent that long. A write to NATS
	// blocked for natsFlusherTimeout gives the connection up too.
	natsPingInterval   = time.Second
	natsMaxPingsOut    = 2
	natsFlusherTimeout = 2 * time.Second
	// Peers this instance shares phones with are pinged every
	// peerPingInterval (each ping waits peerPingTimeout); a peer that
	// leaves peerLostAfter pings in a row unanswered while this instance
	// is connected (crashed, stopped, or cut off without NATS noticing
	// yet) loses every shared phone, 1011, within about 4 s.
	peerPingInterval = time.Second
	peerPingTimeout  = time.Second
	peerLostAfter    = 3
	// maxPending bounds what NATS buffers for this instance's link
	// subscription before it drops messages (a slow consumer, detected and
	// answered by closing every cross-instance phone 1011).
	maxPendingMsgs         = 65536
	DefaultMaxPendingBytes = 64 << 20
	// minPendingBytes is the smallest MaxPendingBytes accepted.
	minPendingBytes = 1 << 10
)

// ErrInvalidOptions reports cluster options the relay refuses to start with.
var ErrInvalidOptions = errors.New("cluster: invalid options")

// Enabled reports whether cluster mode is on.
func (o Options) Enabled() bool { return len(o.URLs) > 0 }

// WithDefaults fills zero fields.
func (o Options) WithDefaults() Options {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.InstanceID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		o.InstanceID = "r" + hex.EncodeToString(b[:])
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.MaxPendingBytes == 0 {
		o.MaxPendingBytes = DefaultMaxPendingBytes
	}
	return o
}

// Validate reports the first unusable value.
func (o Options) Validate() error {
	switch {
	case !ValidToken(o.Name):
		return fmt.Errorf("%w: --cluster-name must be 1-64 of [A-Za-z0-9_-]", ErrInvalidOptions)
	case !ValidToken(o.InstanceID):
		return fmt.Errorf("%w: --instance-id must be 1-64 of [A-Za-z0-9_-]", ErrInvalidOptions)
	case o.Lease < MinLease:
		return fmt.Errorf("%w: --cluster-lease must be at least 1s", ErrInvalidOptions)
	case o.Replicas < 1 || o.Replicas > 5:
		return fmt.Errorf("%w: --cluster-replicas must be 1..5", ErrInvalidOptions)
	case o.MaxPendingBytes < minPendingBytes:
		return fmt.Errorf("%w: --cluster-max-pending-bytes must be at least 1024", ErrInvalidOptions)
	}
	for _, u := range o.URLs {
		if !strings.HasPrefix(u, "nats://") && !strings.HasPrefix(u, "tls://") {
			return fmt.Errorf("%w: --cluster-nats URLs must start with nats:// or tls://", ErrInvalidOptions)
		}
	}
	return nil
}

// Cluster is one instance's membership of the cluster.
type Cluster struct {
	opts Options
	self string
	sub  subjects
	rl   *relay.Relay
	log  *slog.Logger
	m    *clusterMetrics
	nc   *nats.Conn
	js   jetstream.JetStream

	// publish is nc.Publish (Send's; a test counts Send's own allocations
	// through a stand-in).
	publish func(subject string, data []byte) error

	linkSub *nats.Subscription
	// linkIDs interns the server-ids and conn_ids of link messages
	// (onLink only: the link subscription's one goroutine).
	linkIDs interner
	subs    []*nats.Subscription
	// linkSubjects caches the link subject per peer (linkSubject).
	linkSubjects   atomic.Pointer[map[string]string]
	linkSubjectsMu sync.Mutex

	kvMu sync.Mutex
	kv   jetstream.KeyValue
	// kvReady is set once kv is: Ready reads it without waiting on kvMu,
	// which bucket holds across a NATS request.
	kvReady atomic.Bool

	mu     sync.Mutex
	leases map[string]*lease
	// pendingLeases: some lease lacks a write (a grace change made while
	// NATS was away, a re-assertion after a revocation); see flushLeases.
	pendingLeases bool
	// unreach holds the owners a probe or join found unreachable while
	// this instance's NATS was up: logged once per episode.
	unreach map[string]bool

	// ses is this instance's session and its view of the others'
	// (session.go).
	ses      *sessions
	watchers sync.WaitGroup
	// rewatch asks the session loop for a new run of the watch (after a
	// reconnect).
	rewatch chan struct{}
	// sweepPending: a sweep is scheduled (sweep.go).
	sweepMu      sync.Mutex
	sweepPending bool
	// silent counts consecutive unanswered pings per peer (pingLoop only).
	silent map[string]int

	kick      chan struct{}
	stop      chan struct{}
	loopsDone sync.WaitGroup
	// sem bounds concurrent probe/join handlers (a probe waits for a pong).
	sem chan struct{}
	// refusals rate-limits the reconnect refusal log line.
	refusals refusalLog
}

// Start connects to NATS and attaches the cluster to rl. NATS need not be
// reachable yet: the connection is retried in the background, and until it
// is up new claims and remote joins are refused 1013.
func Start(opts Options, rl *relay.Relay, log *slog.Logger, m *metrics.Metrics) (*Cluster, error) {
	opts = opts.WithDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	c := &Cluster{opts: opts, self: opts.InstanceID, sub: subjects{opts.Name, opts.InstanceID}, rl: rl, log: log,
		m: newMetrics(m), leases: make(map[string]*lease), unreach: make(map[string]bool), ses: newSessions(), rewatch: make(chan struct{}, 1), silent: make(map[string]int), kick: make(chan struct{}, 1), stop: make(chan struct{}),
		sem: make(chan struct{}, 64)}
	nopts := []nats.Option{
		nats.Name("pyrycode-relay " + opts.InstanceID),
		nats.CustomInboxPrefix(inboxPrefix(opts.Name, opts.InstanceID)),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		// No reconnect buffer: a publish while disconnected fails at once,
		// so its phone is closed 1011 instead of the frame waiting for a
		// reconnect that may come after its receiver gave up on it.
		nats.ReconnectBufSize(-1),
		nats.PingInterval(natsPingInterval),
		nats.MaxPingsOutstanding(natsMaxPingsOut),
		nats.FlusherTimeout(natsFlusherTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, _ error) { c.disconnected() }),
		nats.ReconnectHandler(func(_ *nats.Conn) { c.reconnected() }),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) { c.asyncError(s, err) }),
	}
	nopts = append(nopts, opts.authOptions()...)
	// A refused reconnect is retried like any other (an account fixed on
	// NATS needs no restart of the fleet; nats.go would otherwise stop after
	// the same authorization error twice from one server); watchRefusals
	// logs it.
	nopts = append(nopts, nats.IgnoreAuthErrorAbort())
	if err := opts.CheckCreds(); err != nil {
		return nil, err
	}
	if err := preflight(opts); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(strings.Join(opts.URLs, ","), nopts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOptions, err)
	}
	c.nc = nc
	c.publish = nc.Publish
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: %v", ErrInvalidOptions, err)
	}
	c.js = js
	rl.SetBackplane(c, c.self)
	if err := c.subscribe(); err != nil {
		nc.Close()
		return nil, err
	}
	c.m.connected.Set(b2f(nc.IsConnected()))
	c.ensureBucket()
	c.establishAtStart()
	c.loopsDone.Add(4)
	go c.sessionLoop()
	go c.pingLoop()
	go c.watchRefusals()
	go c.dupLoop()
	log.Info("cluster mode", "event", "cluster_started", "instance_id", c.self, "cluster_name", opts.Name,
		"lease_ms", opts.Lease.Milliseconds(), "nats_connected", nc.IsConnected())
	return c, nil
}

// Self is this instance's id.
func (c *Cluster) Self() string { return c.self }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *Cluster) subscribe() error {
	link, err := c.nc.Subscribe(c.sub.inbox(kindLink), c.onLink)
	if err != nil {
		return err
	}
	_ = link.SetPendingLimits(maxPendingMsgs, c.opts.MaxPendingBytes)
	c.linkSub = link
	c.subs = append(c.subs, link)
	for _, s := range []struct {
		subj string
		h    nats.MsgHandler
	}{
		{c.sub.inbox(kindJoin), c.onJoin},
		{c.sub.inbox(kindProbe), c.onProbe},
		{c.sub.inbox(kindPing), c.onPing},
		{c.sub.inbox(kindReplaced), c.onReplaced},
		{c.sub.ownerIn(), c.onOwner},
	} {
		sub, err := c.nc.Subscribe(s.subj, s.h)
		if err != nil {
			return err
		}
		c.subs = append(c.subs, sub)
	}
	return nil
}

// bucket returns the claims bucket, creating it on first use (NATS may
// have been unreachable at start).
func (c *Cluster) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	c.kvMu.Lock()
	defer c.kvMu.Unlock()
	if c.kv != nil {
		return c.kv, nil
	}
	if !c.nc.IsConnected() {
		return nil, relay.ErrClusterUnavailable
	}
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucketName(c.opts.Name),
		Description: "pyrycode relay claims: server-id -> owning instance",
		History:     1,
		TTL:         0, // claims live as long as their owner's session (session.go)
		// Removals leave markers that expire (remove), which needs
		// per-message TTLs (NATS 2.11 or later).
		LimitMarkerTTL: markerTTL,
		Replicas:       c.opts.Replicas,
		Storage:        jetstream.FileStorage,
	})
	if err != nil {
		return nil, err
	}
	c.kv = kv
	c.kvReady.Store(true)
	return kv, nil
}

// Send implements relay.Backplane. It allocates nothing in steady state:
// the message is encoded into a pooled buffer (nats.go copies it into its
// own write buffer before Publish returns) and the subject is built once
// per peer.
func (c *Cluster) Send(to string, m relay.LinkMessage) error {
	if !c.nc.IsConnected() {
		return relay.ErrClusterUnavailable
	}
	b := linkBuffers.Get().(*[]byte)
	*b = encodeLink((*b)[:0], m)
	err := c.publish(c.linkSubject(to), *b)
	if cap(*b) <= maxKeptLinkBuffer {
		linkBuffers.Put(b)
	}
	if err == nil {
		c.m.sent.Inc()
	}
	return err
}

// linkBuffers holds Send's encode buffers (*[]byte, so Put does not
// allocate). The pool drops what it holds across garbage collections.
var linkBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}

// maxKeptLinkBuffer is the largest encode buffer returned to the pool: a
// default-sized largest message (256 KiB) and its link header.
const maxKeptLinkBuffer = 320 << 10

// maxLinkSubjects bounds the cached link subjects: one per peer, so a
// cluster of that many instances; past it, subjects are built per message.
const maxLinkSubjects = 1024

// linkSubject is the link subject to peer `to`, cached: peers are few and
// live long, and a subject built per frame is an allocation per frame.
// The cache is copied on write and read without a lock.
func (c *Cluster) linkSubject(to string) string {
	if m := c.linkSubjects.Load(); m != nil {
		if s, ok := (*m)[to]; ok {
			return s
		}
	}
	s := c.sub.to(to, kindLink)
	c.linkSubjectsMu.Lock()
	defer c.linkSubjectsMu.Unlock()
	old := c.linkSubjects.Load()
	if old != nil && len(*old) >= maxLinkSubjects {
		return s
	}
	m := map[string]string{}
	if old != nil {
		m = maps.Clone(*old)
	}
	m[to] = s
	c.linkSubjects.Store(&m)
	return s
}

// Join implements relay.Backplane.
func (c *Cluster) Join(ctx context.Context, serverID string) (relay.JoinOutcome, error) {
	kv, err := c.bucket(ctx)
	if err != nil {
		return relay.JoinOutcome{}, relay.ErrClusterUnavailable
	}
	e, found, err := c.get(ctx, kv, serverID)
	switch {
	case err != nil && errors.Is(err, ErrWire):
		return relay.JoinOutcome{Code: int(relay.CodeNoBinary)}, nil
	case err != nil:
		return relay.JoinOutcome{}, relay.ErrClusterUnavailable
	case !found:
		return relay.JoinOutcome{Code: int(relay.CodeNoBinary)}, nil
	case e.Owner == c.self:
		// Ours without a slot here yet: the relay waits for the claim.
		return relay.JoinOutcome{Owner: c.self}, nil
	}
	switch st, _, err := c.ownerState(ctx, kv, e.Owner, e.Inc); {
	case err != nil:
		return relay.JoinOutcome{}, relay.ErrClusterUnavailable
	case st != ownerLive:
		// Its owner's session ended or was judged dead: no binary
		// serves the claim, and asking would only time out.
		return relay.JoinOutcome{Code: int(relay.CodeNoBinary)}, nil
	}
	msg, err := c.nc.RequestWithContext(ctx, c.sub.to(e.Owner, kindJoin), encodeServerID(serverID))
	if err != nil {
		return relay.JoinOutcome{}, c.unreachable(e.Owner)
	}
	c.reachable(e.Owner)
	j, err := decodeJoinReply(msg.Data)
	if err != nil {
		return relay.JoinOutcome{}, relay.ErrClusterUnavailable
	}
	return relay.JoinOutcome{Owner: e.Owner, ConnID: j.connID, Epoch: j.epoch, Code: j.code}, nil
}

// unreachable is the error for a request that another instance left
// unanswered: ErrOwnerUnreachable while this instance's own NATS link is
// up (the owner's session lives, so it is up, but stalled or cut off),
// logged once per episode naming the owner; ErrClusterUnavailable when
// the fault may be this instance's own link.
func (c *Cluster) unreachable(owner string) error {
	if !c.nc.IsConnected() {
		c.m.claims.WithLabelValues("unavailable").Inc()
		return relay.ErrClusterUnavailable
	}
	c.m.claims.WithLabelValues("unreachable").Inc()
	c.mu.Lock()
	first := !c.unreach[owner]
	c.unreach[owner] = true
	c.mu.Unlock()
	if first {
		c.log.Warn("owner instance does not answer: claims and joins of its server-ids get 1013 until it answers or its session ends",
			"event", "cluster_owner_unreachable", "peer", owner)
	}
	return relay.ErrOwnerUnreachable
}

// reachable ends owner's unreachable episode.
func (c *Cluster) reachable(owner string) {
	c.mu.Lock()
	delete(c.unreach, owner)
	c.mu.Unlock()
}

// probe asks owner whether its binary for serverID is alive.
func (c *Cluster) probe(ctx context.Context, owner, serverID string) (relay.ProbeResult, error) {
	msg, err := c.nc.RequestWithContext(ctx, c.sub.to(owner, kindProbe), encodeServerID(serverID))
	if err != nil {
		return 0, err
	}
	return decodeProbeReply(msg.Data)
}

func (c *Cluster) onLink(msg *nats.Msg) {
	m, err := decodeLink(msg.Data, &c.linkIDs)
	if err != nil {
		c.m.malformed.Inc()
		return
	}
	c.m.received.Inc()
	c.rl.Receive(sender(msg.Subject), m)
}

// async runs a request handler off the subscription's goroutine, bounded:
// past the bound the request goes unanswered (counted as
// relay_cluster_requests_dropped_total{reason="handlers_busy"}) and the
// asker times out.
func (c *Cluster) async(f func()) {
	select {
	case c.sem <- struct{}{}:
		go func() { defer func() { <-c.sem }(); f() }()
	default:
		c.m.requestsDropped.WithLabelValues(string(dropHandlersBusy)).Inc()
	}
}

func (c *Cluster) onJoin(msg *nats.Msg) {
	from := sender(msg.Subject)
	serverID, err := decodeServerID(msg.Data)
	if err != nil {
		c.m.malformed.Inc()
		return
	}
	if c.rl.ClaimPending(serverID) {
		// A claim is being installed here: the join waits for its
		// outcome, off the subscription's goroutine.
		c.async(func() { c.admit(msg, from, serverID) })
		return
	}
	c.admit(msg, from, serverID)
}

// admit answers a join request.
func (c *Cluster) admit(msg *nats.Msg, from, serverID string) {
	connID, code := c.rl.AdmitRemote(from, serverID)
	var epoch uint64
	c.mu.Lock()
	if l := c.leases[serverID]; l != nil {
		epoch = l.epoch
	}
	c.mu.Unlock()
	if err := msg.Respond(encodeJoinReply(joinReply{code: code, epoch: epoch, connID: connID})); err != nil && code == 0 {
		// The home never learns the conn_id: forget the phone.
		c.rl.Reconcile(from, true, nil, time.Now().Add(time.Hour))
	}
}

func (c *Cluster) onProbe(msg *nats.Msg) {
	serverID, err := decodeServerID(msg.Data)
	if err != nil {
		c.m.malformed.Inc()
		return
	}
	c.async(func() {
		res := c.rl.Probe(serverID)
		_ = msg.Respond(encodeProbeReply(res))
	})
}

func (c *Cluster) onPing(msg *nats.Msg) {
	_ = msg.Respond(encodeConnIDs(c.rl.LinkedWith(sender(msg.Subject))))
}

// onReplaced is another instance telling this one that it took a
// server-id this one held (tellReplaced): handled as its broadcast, then
// answered, so its binary gets its 101 only once the slot here is gone.
func (c *Cluster) onReplaced(msg *nats.Msg) {
	o, err := decodeOwner(msg.Data)
	if err != nil {
		c.m.malformed.Inc()
		return
	}
	c.ownerChanged(sender(msg.Subject), o)
	_ = msg.Respond([]byte{wireVersion})
}

func (c *Cluster) onOwner(msg *nats.Msg) {
	o, err := decodeOwner(msg.Data)
	if err != nil {
		c.m.malformed.Inc()
		return
	}
	c.ownerChanged(sender(msg.Subject), o)
}

// ping checks every instance this one shares phones with.
func (c *Cluster) ping() {
	if !c.nc.IsConnected() {
		return
	}
	peers := c.rl.Peers()
	for _, peer := range peers {
		// Links created just before the ping may not be known to the peer
		// yet (a join's reply in flight): only older ones are judged.
		before := time.Now().Add(-requestTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), peerPingTimeout)
		msg, err := c.nc.RequestWithContext(ctx, c.sub.to(peer, kindPing), []byte{wireVersion})
		cancel()
		switch {
		case errors.Is(err, nats.ErrNoResponders) && c.nc.IsConnected():
			c.peerLost(peer)
		case err != nil:
			// Unanswered: the peer crashed, stopped, or is cut off (NATS
			// may keep its subscriptions for minutes), or this instance's
			// own link is failing, which NATS's pings tell within 3 s.
			if c.silent[peer]++; c.silent[peer] >= peerLostAfter && c.nc.IsConnected() {
				c.peerLost(peer)
			}
		default:
			delete(c.silent, peer)
			ids, err := decodeConnIDs(msg.Data)
			// The peer published what it sent before its answer (a
			// phone's last frames, its leave) ahead of the answer, but
			// they may still wait in this instance's link subscription:
			// judge the links only once those are handled, or the answer
			// would overtake them and drop a phone before its last
			// frames (issue 24, defect 9).
			if err == nil && c.caughtUp(peerPingTimeout) {
				c.rl.Reconcile(peer, true, ids, before)
			}
		}
	}
	for peer := range c.silent {
		if !slices.Contains(peers, peer) {
			delete(c.silent, peer)
		}
	}
}

// peerLost closes every link with a peer that is gone.
func (c *Cluster) peerLost(peer string) {
	delete(c.silent, peer)
	c.log.Warn("cluster peer gone", "event", "cluster_peer_lost", "peer", peer)
	c.rl.Reconcile(peer, false, nil, time.Now())
}

// caughtUp waits (at most d) until every message this instance had
// received when it was called has been handled (nats.go's barrier runs
// behind everything already queued for each subscription).
func (c *Cluster) caughtUp(d time.Duration) bool {
	done := make(chan struct{})
	if err := c.nc.Barrier(func() { close(done) }); err != nil {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// pingLoop pings the peers this instance shares phones with.
func (c *Cluster) pingLoop() {
	defer c.loopsDone.Done()
	t := time.NewTicker(peerPingInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.ping()
	}
}

func (c *Cluster) kickRefresh() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Cluster) disconnected() {
	c.m.connected.Set(0)
	c.log.Warn("NATS connection lost: cross-instance phones closed 1011, new claims and remote joins refused 1013",
		"event", "cluster_disconnected")
	c.rl.LinkLost(relay.LossDisconnect)
}

func (c *Cluster) reconnected() {
	select {
	case c.rewatch <- struct{}{}:
	default:
	}
	c.m.connected.Set(1)
	c.log.Info("NATS connection back", "event", "cluster_reconnected")
	if err := payloadFits(c.nc.MaxPayload(), c.opts.MaxLinkPayload); err != nil {
		c.log.Warn(err.Error()+": large cross-instance frames will close their phones 1011", "event", "cluster_payload_too_small")
	}
	c.kickRefresh()
}

func (c *Cluster) asyncError(s *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrSlowConsumer) {
		c.m.slowConsumer.Inc()
		c.log.Warn("NATS dropped messages for this instance: cross-instance phones closed 1011", "event", "cluster_slow_consumer")
		c.rl.LinkLost(relay.LossSlowConsumer)
		return
	}
	c.log.Warn("NATS error", "event", "cluster_nats_error", "reason", natsErrorReason(err))
}

// leasedIDs is a snapshot of the server-ids this instance holds claims for.
func (c *Cluster) leasedIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.leases))
	for id := range c.leases {
		ids = append(ids, id)
	}
	return ids
}

// Close releases this instance's claims (so their binaries can reclaim on
// another instance at once) and closes the NATS connection. Call it after
// the relay has shut down.
func (c *Cluster) Close() {
	close(c.stop)
	c.loopsDone.Wait()
	c.watchers.Wait()
	for _, id := range c.leasedIDs() {
		c.Release(id)
	}
	c.endSession()
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
	_ = c.nc.Drain()
}
