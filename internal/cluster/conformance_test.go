package cluster_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// Protocol conformance of cluster mode (issue 11: "the protocol conformance
// of a phone on one instance and its binary on another is identical to
// single-instance mode").
//
// TestClusterConformance runs ONE table of protocol cases (cfCases, every
// rule of docs/protocol.md a phone or a binary can observe) against
//
//   - single: one real relay binary without NATS;
//   - remote: a real 3-instance cluster (embedded NATS, three real relay
//     binaries) where the binary is on one instance and every phone on the
//     others;
//   - mixed: the same cluster with phones spread over all three instances,
//     some local to the owner, some remote, and a second binary on the
//     owner's own instance;
//
// and records, per case and topology, a transcript of what the clients
// observe: every frame each connection receives and its order, the
// envelopes' bytes (conn_ids replaced by the phone's name), close codes and
// reasons, HTTP statuses and the headers the protocol names, and whether a
// connection is still open. Nothing timing-dependent goes in (no latency,
// no ordering between two different sockets). The cluster transcripts must
// equal the single-instance one; the single-instance one must equal its
// golden file in testdata/conformance (go test -run TestClusterConformance
// ./internal/cluster -conformance-update rewrites them), so a change of
// single-instance behaviour is a visible diff too.
//
// What cluster mode legitimately does differently (1013 while NATS is
// unreachable, 1011 for lost cross-instance links, an instance's own
// shutdown) is not in the table: docs/cluster.md lists it and the other
// cluster tests cover it.

var conformanceUpdate = flag.Bool("conformance-update", false, "rewrite internal/cluster/testdata/conformance from the single-instance transcripts")

// Short timers: the grace period, the conflict probe and (in the heartbeat
// configuration) the heartbeat show up in about a second.
const (
	cfGrace   = 3 * time.Second
	cfMaxMsg  = 4096 // --max-message-bytes: oversize cases stay small
	cfQuiet   = 300 * time.Millisecond
	cfExpect  = 8 * time.Second
	cfLongMsg = 160 // longer messages are recorded as length + hash
)

// cfConfigs are the relay configurations the cases run under; each is
// started once as a single relay and once as a 3-instance cluster.
var cfConfigs = map[string][]string{
	// The heartbeat is out of the way, so a binary that stops reading is
	// "dead" only to the conflict probe (takeover cases).
	// A short read timeout shows a half-sent message's 1011.
	"default": {"--ping-interval", "1h", "--read-timeout", "1s"},
	// Token forwarding on, and a heartbeat short enough to watch.
	// The longer grace keeps a slot whose binary the heartbeat closed in
	// grace until the script reclaims it, however slow the machine.
	"token-heartbeat": {"--forward-v1-token", "--ping-interval", "500ms", "--pong-timeout", "2s", "--grace-period", "8s"},
}

type cfEnv struct {
	single  *instance
	cluster [3]*instance // ids a, b, c
}

type cfTopo struct {
	name   string
	binary func(e *cfEnv, k int) *instance // the case's k-th binary
	phone  func(e *cfEnv, j int) *instance // the case's j-th phone
}

var cfTopos = []cfTopo{
	{"single",
		func(e *cfEnv, _ int) *instance { return e.single },
		func(e *cfEnv, _ int) *instance { return e.single }},
	// Binary 0 (the first claimant) on a; the second on c, the third on b
	// (cross-instance conflict, takeover, reclaim); phones on b and c only.
	{"remote",
		func(e *cfEnv, k int) *instance { return e.cluster[[]int{0, 2, 1}[k%3]] },
		func(e *cfEnv, j int) *instance { return e.cluster[1+j%2] }},
	// Binaries 0 and 1 on a (a conflict decided by the owner's own
	// registry in cluster mode), binary 2 on b; phones round-robin over
	// a, b, c: every case has local and remote phones of one binary.
	{"mixed",
		func(e *cfEnv, k int) *instance { return e.cluster[[]int{0, 0, 1}[k%3]] },
		func(e *cfEnv, j int) *instance { return e.cluster[j%3] }},
}

func TestClusterConformance(t *testing.T) {
	t.Parallel()
	_, err := build()
	require.NoError(t, err)
	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	envs := map[string]*cfEnv{}
	var procs []*instance
	for name, extra := range cfConfigs {
		e := startCfEnv(t, ns.URL(), name, extra)
		envs[name] = e
		procs = append(procs, e.single, e.cluster[0], e.cluster[1], e.cluster[2])
	}
	t.Cleanup(func() {
		for _, in := range procs {
			if in != nil && !in.proc.Exited() {
				in.proc.Kill()
			}
		}
		if !t.Failed() {
			return
		}
		// CONFORMANCE_LOGS=dir keeps every relay's whole log there.
		dir := os.Getenv("CONFORMANCE_LOGS")
		for _, in := range procs {
			if in == nil {
				continue
			}
			if dir != "" {
				f := filepath.Join(dir, strings.ReplaceAll(in.id, "/", "-")+".log")
				_ = os.WriteFile(f, []byte(in.proc.LogText()), 0o644)
				t.Logf("relay %s log: %s", in.id, f)
				continue
			}
			t.Logf("relay %s log (tail):\n%s", in.id, tailLines(in.proc.LogText(), 40))
		}
	})

	// Every case in every topology runs at once (they use their own
	// server-ids), bounded so the shared machine is not flooded.
	type result struct{ lines, timed []string }
	results := make([][]result, len(cfCases))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, c := range cfCases {
		results[i] = make([]result, len(cfTopos))
		for j, topo := range cfTopos {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				s := newScript(envs[c.config], topo)
				c.run(s)
				s.finish()
				results[i][j] = result{s.lines, s.timed}
			}()
		}
	}
	wg.Wait()

	for i, c := range cfCases {
		t.Run(c.name, func(t *testing.T) {
			single := strings.Join(results[i][0].lines, "\n") + "\n"
			golden := filepath.Join("testdata", "conformance", c.name+".txt")
			if *conformanceUpdate {
				require.NoError(t, os.MkdirAll(filepath.Dir(golden), 0o755))
				require.NoError(t, os.WriteFile(golden, []byte(single), 0o644))
			} else {
				want, err := os.ReadFile(golden)
				require.NoError(t, err, "no golden transcript: run go test -run TestClusterConformance ./internal/cluster -conformance-update")
				require.Equal(t, string(want), single,
					"single-instance transcript changed (%s); if intended, rerun with -conformance-update and review the diff", golden)
			}
			for j, topo := range cfTopos[1:] {
				got := strings.Join(results[i][j+1].lines, "\n") + "\n"
				if got != single {
					t.Logf("timed transcripts:\nsingle:\n%s\n%s:\n%s", strings.Join(results[i][0].timed, "\n"),
						topo.name, strings.Join(results[i][j+1].timed, "\n"))
				}
				require.Equal(t, single, got, "cluster topology %q differs from single-instance mode", topo.name)
			}
		})
	}
}

// startCfEnv starts one single relay and a 3-instance cluster (cluster name
// cf<config>, so configurations share one NATS) in parallel.
func startCfEnv(t *testing.T, natsURL, config string, extra []string) *cfEnv {
	t.Helper()
	common := []string{"serve", "--insecure-listen", "127.0.0.1:0",
		"--grace-period", cfGrace.String(), "--probe-timeout", "1s", "--close-timeout", "1s",
		"--max-message-bytes", fmt.Sprint(cfMaxMsg),
		// Every client is 127.0.0.1: lift the per-address limits.
		"--upgrade-rate", "10000", "--upgrade-burst", "10000", "--max-conns-per-ip", "4096", "--max-sockets-per-ip", "8192"}
	common = append(common, extra...)
	clusterName := "cf" + strings.ReplaceAll(config, "-", "")
	e := &cfEnv{}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	start := func(i int, id string, args []string) {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		p, err := attacks.StartProcess(ctx, relayBin, args...)
		if err != nil {
			if p != nil {
				err = fmt.Errorf("%w\n%s", err, p.LogText())
			}
			errs[i] = fmt.Errorf("start relay %s: %w", id, err)
			return
		}
		in := &instance{id: id, proc: p, ws: "ws://" + p.Addr}
		if i == 0 {
			e.single = in
		} else {
			e.cluster[i-1] = in
		}
	}
	wg.Add(4)
	go start(0, config+"/single", common)
	for i, id := range []string{"a", "b", "c"} {
		args := append(append([]string{}, common...), "--cluster-nats", natsURL, "--cluster-name", clusterName,
			"--instance-id", id, "--cluster-lease", lease.String())
		go start(i+1, config+"/"+id, args)
	}
	wg.Wait()
	for _, in := range append([]*instance{e.single}, e.cluster[:]...) {
		if in != nil {
			t.Cleanup(in.proc.Kill)
		}
	}
	for _, err := range errs {
		require.NoError(t, err)
	}
	return e
}

// cfCase is one protocol rule (or a few related ones) as a script. A
// script only acts and observes; what it observed is compared afterwards.
type cfCase struct {
	name   string
	config string
	run    func(s *script)
}

// ---------------------------------------------------------------------------
// The script: actions and observations, recorded as transcript lines.

type script struct {
	env   *cfEnv
	topo  cfTopo
	lines []string
	// timed is lines with wall-clock times, shown only when a transcript
	// differs (timing is never compared).
	timed []string
	began time.Time
	// names maps real identifiers (conn_ids, server-ids) to the script's
	// names, so transcripts of different runs can be compared.
	names map[string]string
	conn  map[string]string // phone name -> conn_id
	sids  map[string]string // server-id name -> server-id
	peers []*peer
	raws  []net.Conn
	// rcvbuf, when set, is the next dial's socket receive buffer.
	rcvbuf int
}

// rcvbufClient dials with SO_RCVBUF set to n: a slow reader's kernel then
// holds little of what it has not read, so the relay's bytes in flight to
// it are acknowledged at the pace it reads (what the liveness rule sees).
func rcvbufClient(n int) *http.Client {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n) })
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

type peer struct {
	name   string
	host   *instance
	ws     *websocket.Conn
	events chan cfEvent
	// count is the messages read so far; the reader parks after message
	// number parkAt (the socket stays open, unread: no more pongs). deaf is
	// true while it is parked; resume restarts it. A count, not a flag: a
	// flag set just after the reader handed over a message but before it
	// looked at the flag would park it one message early.
	count  atomic.Int64
	parkAt atomic.Int64
	// every, when set, is how long the reader pauses after each message:
	// a slow but live peer.
	every  atomic.Int64
	deaf   atomic.Bool
	parked chan struct{}
	resume chan struct{}
	ended  atomic.Bool // the reader saw the connection end
	closed bool        // its end is in the transcript
	self   bool        // the script closed it (its own end is not observed)
}

type cfEvent struct {
	typ    websocket.MessageType
	data   []byte
	end    bool
	code   websocket.StatusCode
	reason string
}

func newScript(e *cfEnv, topo cfTopo) *script {
	return &script{env: e, topo: topo, began: time.Now(), names: map[string]string{}, conn: map[string]string{}, sids: map[string]string{}}
}

func (s *script) log(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	s.lines = append(s.lines, line)
	s.timed = append(s.timed, fmt.Sprintf("%s %6dms %s", time.Now().UTC().Format("15:04:05.000"), time.Since(s.began).Milliseconds(), line))
}

var connIDPattern = regexp.MustCompile(`client-[0-9a-f]{16}`)

// norm replaces known identifiers with their names, any other conn_id with
// a placeholder, and shortens long messages to their length and hash.
func (s *script) norm(b []byte) string {
	str := string(b)
	for real, name := range s.names {
		str = strings.ReplaceAll(str, real, name)
	}
	str = connIDPattern.ReplaceAllString(str, "<unknown conn_id>")
	if len(str) > cfLongMsg {
		sum := sha256.Sum256([]byte(str))
		return fmt.Sprintf("<%d bytes, starts %q, sha256 %x>", len(str), str[:40], sum[:6])
	}
	return str
}

// sid returns the server-id named name in this script (fresh per script).
func (s *script) sid(name string) string {
	if id, ok := s.sids[name]; ok {
		return id
	}
	id := newID("cf-" + name)
	s.sids[name] = id
	s.names[id] = name
	return id
}

// dial opens a WebSocket to host and starts its reader; nil and a
// transcript line when the upgrade fails.
func (s *script) dial(name string, host *instance, path string, h http.Header) *peer {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPHeader: h}
	if s.rcvbuf > 0 {
		opts.HTTPClient = rcvbufClient(s.rcvbuf)
		s.rcvbuf = 0
	}
	ws, resp, err := websocket.Dial(ctx, host.ws+path, opts)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		s.log("%s: upgrade refused: HTTP %d", name, status)
		return nil
	}
	ws.SetReadLimit(1 << 20)
	p := &peer{name: name, host: host, ws: ws, events: make(chan cfEvent, 1024), parked: make(chan struct{}, 1), resume: make(chan struct{})}
	go p.read()
	s.peers = append(s.peers, p)
	return p
}

func (p *peer) read() {
	for {
		typ, data, err := p.ws.Read(context.Background())
		if err != nil {
			ev := cfEvent{end: true, code: websocket.CloseStatus(err)}
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				ev.reason = ce.Reason
			}
			p.ended.Store(true)
			p.events <- ev
			return
		}
		n := p.count.Add(1)
		p.events <- cfEvent{typ: typ, data: data}
		if d := p.every.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		if p.parkAt.Load() == n {
			p.deaf.Store(true)
			p.parked <- struct{}{}
			<-p.resume
		}
	}
}

func headers(sid string, kv ...string) http.Header {
	h := http.Header{}
	h.Set("x-pyrycode-server", sid)
	h.Set("user-agent", "conformance-test")
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// binary connects the case's k-th binary for server-id sidName on its
// topology's instance, at path (default /v1/server), and waits until the
// relay has claimed for it or closed it.
func (s *script) binary(name string, k int, sidName string, path ...string) *peer {
	host := s.topo.binary(s.env, k)
	p := "/v1/server"
	if len(path) > 0 {
		p = path[0]
	}
	sid := s.sid(sidName)
	s.log("%s: binary dials %s for %s", name, p, sidName)
	before := host.claims(sid)
	b := s.dial(name, host, p, headers(sid, "x-pyrycode-version", "conformance/1"))
	if b == nil {
		return nil
	}
	if !pollUntil(15*time.Second, func() bool { return b.ended.Load() || host.claims(sid) > before }) {
		s.log("%s: neither claimed nor closed within 15s", name)
	}
	return b
}

// phone connects the case's j-th phone for sidName, at path (default
// /v1/client), with token "tok-<name>", and waits until the relay has
// admitted or refused it.
func (s *script) phone(name string, j int, sidName string, path ...string) *peer {
	host := s.topo.phone(s.env, j)
	p := "/v1/client"
	if len(path) > 0 {
		p = path[0]
	}
	sid := s.sid(sidName)
	s.log("%s: phone dials %s for %s", name, p, sidName)
	count := func() int { return phoneDecisions(host, sid) }
	before := count()
	ph := s.dial(name, host, p, headers(sid, "x-pyrycode-token", "tok-"+name, "x-pyrycode-device-name", "conformance "+name))
	if ph == nil {
		return nil
	}
	if !pollUntil(15*time.Second, func() bool { return ph.ended.Load() || count() > before }) {
		s.log("%s: neither admitted nor refused within 15s", name)
	}
	return ph
}

// phoneDecisions counts the phones of sid that in admitted or refused.
func phoneDecisions(in *instance, sid string) int {
	n := 0
	for _, l := range in.proc.Log() {
		if (strings.Contains(l, `"event":"phone_joined"`) || strings.Contains(l, `"event":"phone_refused"`)) &&
			strings.Contains(l, `"server_id":"`+sid+`"`) {
			n++
		}
	}
	return n
}

// rawPhone is the case's j-th phone speaking WebSocket by hand, to send
// what no client library would (half a message). It waits until the relay
// has admitted or refused it.
func (s *script) rawPhone(name string, j int, sidName string) net.Conn {
	host := s.topo.phone(s.env, j)
	sid := s.sid(sidName)
	s.log("%s: phone dials /v1/client for %s (a hand-written client)", name, sidName)
	addr := strings.TrimPrefix(host.ws, "ws://")
	before := phoneDecisions(host, sid)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		s.log("%s: dial failed", name)
		return nil
	}
	s.raws = append(s.raws, c)
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "GET /v1/client HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"+
		"X-Pyrycode-Server: %s\r\nX-Pyrycode-Token: tok-%s\r\nUser-Agent: conformance-test\r\n\r\n", addr, sid, name)
	// Read the response byte by byte up to its blank line, so no frame
	// bytes after it are buffered away.
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := io.ReadFull(c, one); err != nil {
			s.log("%s: no upgrade response", name)
			return c
		}
		head = append(head, one[0])
	}
	s.log("%s: %s", name, strings.SplitN(string(head), "\r\n", 2)[0])
	if !pollUntil(15*time.Second, func() bool { return phoneDecisions(host, sid) > before }) {
		s.log("%s: neither admitted nor refused within 15s", name)
	}
	return c
}

// rawFrame writes a masked (zero key) text frame announcing len(payload)
// bytes but carrying only the first n.
func rawFrame(c net.Conn, payload []byte, n int) error {
	h := []byte{0x81}
	switch l := len(payload); {
	case l < 126:
		h = append(h, 0x80|byte(l))
	default:
		h = append(h, 0x80|126, byte(l>>8), byte(l))
	}
	h = append(h, 0, 0, 0, 0)
	_, err := c.Write(append(h, payload[:n]...))
	return err
}

// rawEnd reads the hand-written client's socket until the relay's close
// frame (pings are left unanswered) and records its code and reason.
func (s *script) rawEnd(name string, c net.Conn) {
	if c == nil {
		return
	}
	for {
		var h [2]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			s.log("%s: connection ended without a close frame", name)
			return
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var e [2]byte
			_, _ = io.ReadFull(c, e[:])
			n = int(e[0])<<8 | int(e[1])
		case 127:
			s.log("%s: unexpected 64-bit frame length", name)
			return
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c, payload); err != nil {
			s.log("%s: connection ended mid-frame", name)
			return
		}
		switch op := h[0] & 0x0f; op {
		case 0x9, 0xa: // ping, pong: not part of the protocol's transcript
		case 0x8:
			if len(payload) < 2 {
				s.log("%s: closed without a status", name)
				return
			}
			s.log("%s: closed %d %q", name, int(payload[0])<<8|int(payload[1]), payload[2:])
			return
		default:
			s.log("%s <- opcode %d %s", name, op, s.norm(payload))
		}
	}
}

// record writes one event of p into the transcript.
func (s *script) record(p *peer, ev cfEvent) {
	switch {
	case ev.end && p.self:
		// The end of a connection the script closed itself is not the
		// relay's behaviour (the library's own close handshake).
		p.closed = true
	case ev.end && ev.code == -1:
		s.log("%s: connection dropped without a close frame", p.name)
		p.closed = true
	case ev.end:
		s.log("%s: closed %d %q", p.name, ev.code, ev.reason)
		p.closed = true
	case ev.typ == websocket.MessageBinary:
		s.log("%s <- binary message %s", p.name, s.norm(ev.data))
	default:
		s.log("%s <- %s", p.name, s.norm(ev.data))
	}
}

// expect records p's next event: a message or its end.
func (s *script) expect(p *peer) {
	if p == nil {
		s.log("(no connection)")
		return
	}
	if p.closed {
		s.log("%s: nothing (already closed)", p.name)
		return
	}
	select {
	case ev := <-p.events:
		s.record(p, ev)
	case <-time.After(cfExpect):
		s.log("%s: nothing within %v", p.name, cfExpect)
	}
}

// quiet waits cfQuiet once and records what each peer received meanwhile
// ("quiet" if nothing).
func (s *script) quiet(ps ...*peer) {
	time.Sleep(cfQuiet)
	for _, p := range ps {
		if p == nil {
			continue
		}
		got := false
	drain:
		for {
			select {
			case ev := <-p.events:
				s.record(p, ev)
				got = true
			default:
				break drain
			}
		}
		if !got {
			s.log("%s: quiet", p.name)
		}
	}
}

// finish records what every connection still had pending and whether it is
// still open, then closes them all.
func (s *script) finish() {
	time.Sleep(cfQuiet)
	s.log("-- end --")
	for _, p := range s.peers {
		if p.deaf.Load() {
			s.log("%s: (not reading)", p.name)
			continue
		}
	drain:
		for {
			select {
			case ev := <-p.events:
				s.record(p, ev)
			default:
				break drain
			}
		}
		if !p.closed && !p.self {
			s.log("%s: open", p.name)
		}
	}
	for _, p := range s.peers {
		if p.deaf.Load() {
			close(p.resume)
		}
		_ = p.ws.CloseNow()
	}
	for _, c := range s.raws {
		_ = c.Close()
	}
}

// send writes raw as a text message from p.
func (s *script) send(p *peer, raw string) {
	s.write(p, websocket.MessageText, raw)
}

func (s *script) write(p *peer, typ websocket.MessageType, raw string) {
	if p == nil {
		s.log("(no connection)")
		return
	}
	kind := ""
	if typ == websocket.MessageBinary {
		kind = "binary message "
	}
	s.log("%s -> %s%s", p.name, kind, s.norm([]byte(raw)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.ws.Write(ctx, typ, []byte(raw)); err != nil {
		s.log("%s: write failed", p.name)
	}
}

// to makes binary b send phone's conn_id an envelope with frame (raw JSON).
func (s *script) to(b *peer, phone, frame string) {
	s.send(b, fmt.Sprintf(`{"conn_id":%q,"frame":%s}`, s.conn[phone], frame))
}

// learn makes phone p send a hello and records the envelope binary b
// receives; the conn_id in it becomes p's name.
func (s *script) learn(p, b *peer) {
	if p == nil || b == nil {
		s.log("(no connection)")
		return
	}
	s.send(p, fmt.Sprintf(`{"hello":%q}`, p.name))
	s.learnAt(p.name, b)
}

// learnAt records the envelope binary b receives next; its conn_id
// becomes phone's name.
func (s *script) learnAt(phone string, b *peer) {
	select {
	case ev := <-b.events:
		if !ev.end {
			if m := regexp.MustCompile(`"conn_id":"([^"]*)"`).FindSubmatch(ev.data); m != nil {
				id := string(m[1])
				name := phone
				if !connIDPattern.MatchString(id) || len(id) != len("client-")+16 {
					name += "(malformed conn_id)"
				}
				s.conn[phone] = id
				s.names[id] = name
			}
		}
		s.record(b, ev)
	case <-time.After(cfExpect):
		s.log("%s: nothing within %v", b.name, cfExpect)
	}
}

// close makes p close its connection with code and reason.
func (s *script) close(p *peer, code websocket.StatusCode, reason string) {
	if p == nil {
		return
	}
	s.log("%s: closes %d %q", p.name, code, reason)
	p.self = true
	_ = p.ws.Close(code, reason)
}

// drop makes p drop its socket without a close frame.
func (s *script) drop(p *peer) {
	s.log("%s: drops its socket", p.name)
	p.self = true
	_ = p.ws.CloseNow()
}

// deafen stops p reading (it no longer answers pings) after the message
// trigger makes it receive, which is recorded.
func (s *script) deafen(p *peer, trigger func()) {
	p.parkAt.Store(p.count.Load() + 1)
	trigger()
	s.expect(p)
	select {
	case <-p.parked:
		s.log("%s: stops reading", p.name)
	case <-time.After(cfExpect):
		s.log("%s: did not stop reading", p.name)
	}
}

// slow makes p read one message every d from now on.
func (s *script) slow(p *peer, d time.Duration) {
	s.log("%s: reads one message every %v", p.name, d)
	p.every.Store(int64(d))
}

// hear makes a deaf p read again.
func (s *script) hear(p *peer) {
	s.log("%s: reads again", p.name)
	p.deaf.Store(false)
	p.resume <- struct{}{}
}

// relayClosed records how the relay says it closed p (its close_code and
// reason label, from the log of p's instance): for a peer that stopped
// reading, whose socket the relay dropped after the close timeout, this is
// the close frame it was sent and never read.
func (s *script) relayClosed(p *peer, event, key, value string) {
	var line string
	if !pollUntil(15*time.Second, func() bool {
		for _, l := range p.host.proc.Log() {
			if strings.Contains(l, `"event":"`+event+`"`) && strings.Contains(l, `"`+key+`":"`+value+`"`) {
				line = l
				return true
			}
		}
		return false
	}) {
		s.log("%s: no %s log line within 15s", p.name, event)
		return
	}
	var f struct {
		Code   int    `json:"close_code"`
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal([]byte(line), &f)
	s.log("%s: the relay closed it %d (%s)", p.name, f.Code, f.Reason)
}

// http makes one plain HTTP request (or a WebSocket upgrade when h names a
// server-id) and records the status, body and the headers the protocol
// names.
func (s *script) http(label string, host *instance, method, path string, h http.Header) {
	req, err := http.NewRequest(method, "http"+strings.TrimPrefix(host.ws, "ws")+path, nil)
	if err != nil {
		s.log("%s: %v", label, err)
		return
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if h != nil {
		// A WebSocket upgrade request, as a client library sends it.
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.log("%s: request failed", label)
		return
	}
	defer resp.Body.Close()
	var body []byte
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 1024))
	}
	s.log("%s: HTTP %d body %q Allow %q Retry-After-set %v", label, resp.StatusCode, bytes.TrimSpace(body),
		resp.Header.Get("Allow"), resp.Header.Get("Retry-After") != "")
}

// ---------------------------------------------------------------------------
// The table. Phone j and binary k are placed by the topology; names are
// what the transcript shows.

var cfCases = []cfCase{
	{name: "upgrade-headers", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		bh, ph := s.topo.binary(s.env, 0), s.topo.phone(s.env, 0)
		sid := s.sid("S0")
		s.http("binary without x-pyrycode-version", bh, "GET", "/v1/server", headers(sid))
		s.http("binary without user-agent", bh, "GET", "/v1/server", http.Header{"X-Pyrycode-Server": {sid}, "X-Pyrycode-Version": {"v"}, "User-Agent": {""}})
		s.http("binary with server-id a/b", bh, "GET", "/v1/server", headers("a/b", "x-pyrycode-version", "v"))
		s.http("binary with a 129-byte server-id", bh, "GET", "/v2/server", headers(strings.Repeat("a", 129), "x-pyrycode-version", "v"))
		s.http("phone without x-pyrycode-token", ph, "GET", "/v1/client", headers(sid))
		s.http("phone with an empty token", ph, "GET", "/v2/client", headers(sid, "x-pyrycode-token", ""))
		s.http("phone with an empty server-id", ph, "GET", "/v1/client", headers("", "x-pyrycode-token", "t"))
		s.http("phone with two tokens", ph, "GET", "/v1/client", http.Header{"X-Pyrycode-Server": {sid}, "X-Pyrycode-Token": {"a", "b"}, "User-Agent": {"u"}})
		s.http("unknown path", ph, "GET", "/v1/nope", nil)
		s.http("POST to /v1/client", ph, "POST", "/v1/client", nil)
		// None of that touched the slot: a phone still joins and routes.
		p := s.phone("P0", 0, "S0")
		s.learn(p, b)
	}},
	{name: "phone-join", config: "default", run: func(s *script) {
		// Nobody holds S9: 4404 on both paths.
		p0 := s.phone("P0", 0, "S9")
		s.expect(p0)
		p1 := s.phone("P1", 1, "S9", "/v2/client")
		s.expect(p1)
		// A /v2 binary and phones on both paths share one slot.
		b := s.binary("B0", 0, "S0", "/v2/server")
		p2 := s.phone("P2", 2, "S0")
		p3 := s.phone("P3", 3, "S0", "/v2/client")
		s.learn(p2, b)
		s.learn(p3, b)
		s.to(b, "P3", `{"to":"P3"}`)
		s.expect(p3)
		s.quiet(b, p2, p3)
	}},
	{name: "frames-both-ways", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		var ps []*peer
		for j := 0; j < 4; j++ {
			ps = append(ps, s.phone(fmt.Sprintf("P%d", j), j, "S0"))
			s.learn(ps[j], b)
		}
		// Phone -> binary: wrapped with its conn_id, the frame verbatim
		// (whitespace, escapes and key order kept), no token (forwarding
		// is off by default).
		s.send(ps[1], "{ \"v\" : 2, \"type\":\"noise_init\" ,\n \"data\":\"AAEC\", \"s\":\"\\u00e9\\ud83d\\ude00 é\" }")
		s.expect(b)
		// Order: five frames each way.
		for k := 0; k < 5; k++ {
			s.send(ps[0], fmt.Sprintf(`{"n":%d}`, k))
		}
		for k := 0; k < 5; k++ {
			s.expect(b)
		}
		for k := 0; k < 5; k++ {
			s.to(b, "P2", fmt.Sprintf(`{"m":%d}`, k))
		}
		for k := 0; k < 5; k++ {
			s.expect(ps[2])
		}
		// Binary -> phone: only the addressed phone gets only the frame;
		// unknown envelope fields are ignored; close_code 0 is an
		// ordinary frame.
		s.send(b, fmt.Sprintf(`{"frame":{"v":2, "type":"noise_msg"},"extra":[1],"conn_id":%q}`, s.conn["P3"]))
		s.expect(ps[3])
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":0,"frame":{"zero":true}}`, s.conn["P1"]))
		s.expect(ps[1])
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":null,"frame":{"null":true}}`, s.conn["P0"]))
		s.expect(ps[0])
		// The largest phone message the cap allows reaches the binary.
		s.send(ps[3], `{"pad":"`+strings.Repeat("x", cfMaxMsg-10)+`"}`)
		s.expect(b)
		s.quiet(append(ps, b)...)
	}},
	{name: "close-directive", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		var ps []*peer
		for j := 0; j < 5; j++ {
			ps = append(ps, s.phone(fmt.Sprintf("P%d", j), j, "S0"))
			s.learn(ps[j], b)
		}
		// The frame first, in order behind earlier frames, then the code.
		s.to(b, "P0", `{"before":1}`)
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":4401,"frame":{"v":2,"type":"error","code":"unauthorized"}}`, s.conn["P0"]))
		s.expect(ps[0])
		s.expect(ps[0])
		s.expect(ps[0])
		// "frame": null and an absent frame close only.
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":4408,"frame":null}`, s.conn["P1"]))
		s.expect(ps[1])
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":1000}`, s.conn["P2"]))
		s.expect(ps[2])
		s.send(b, fmt.Sprintf(`{"conn_id":%q,"close_code":1001,"frame":{"bye":true}}`, s.conn["P3"]))
		s.expect(ps[3])
		s.expect(ps[3])
		// No close notice for a directive's close; frames for a closed
		// phone go nowhere; the other phone is untouched.
		s.quiet(b, ps[4])
		s.to(b, "P0", `{"after":"close"}`)
		s.to(b, "P4", `{"still":"here"}`)
		s.expect(ps[4])
		s.quiet(b, ps[4])
		// Its place is free again.
		p := s.phone("P5", 5, "S0")
		s.learn(p, b)
	}},
	{name: "close-notice", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		var ps []*peer
		for j := 0; j < 5; j++ {
			ps = append(ps, s.phone(fmt.Sprintf("P%d", j), j, "S0"))
			s.learn(ps[j], b)
		}
		s.close(ps[0], websocket.StatusNormalClosure, "")
		s.expect(b)
		s.close(ps[1], 4000, "bye")
		s.expect(b)
		s.drop(ps[2])
		s.expect(b)
		// A frame then a close: the binary sees them in that order.
		s.send(ps[3], `{"last":true}`)
		s.close(ps[3], websocket.StatusGoingAway, "")
		s.expect(b)
		s.expect(b)
		// Envelopes for a gone phone are dropped; the binary stays.
		s.to(b, "P0", `{"late":true}`)
		s.quiet(b, ps[4])
		s.learn(ps[4], b)
	}},
	{name: "phone-errors", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		var ps []*peer
		for j := 0; j < 7; j++ {
			ps = append(ps, s.phone(fmt.Sprintf("P%d", j), j, "S0"))
			s.learn(ps[j], b)
		}
		bad := []string{`not json`, `[1,2]`, `{} {}`, "{\"s\":\"\xff\"}", `"text"`}
		for j, m := range bad {
			s.send(ps[j], m)
			s.expect(ps[j])
			s.expect(b)
		}
		s.write(ps[5], websocket.MessageBinary, `{"binary":"opcode"}`)
		s.expect(ps[5])
		s.expect(b)
		// Over the cap by one byte: 1009, with a notice.
		s.send(ps[6], `{"pad":"`+strings.Repeat("x", cfMaxMsg-9)+`"}`)
		s.expect(ps[6])
		s.expect(b)
		// The binary and a new phone are unaffected.
		p := s.phone("P7", 7, "S0")
		s.learn(p, b)
		s.to(b, "P7", `{"ok":true}`)
		s.expect(p)
	}},
	{name: "phone-read-timeout", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		p1 := s.phone("P1", 1, "S0")
		s.learn(p1, b)
		r := s.rawPhone("P0", 0, "S0")
		if r == nil {
			return
		}
		hello := []byte(`{"hello":"P0"}`)
		s.log("P0 -> %s", hello)
		_ = rawFrame(r, hello, len(hello))
		s.learnAt("P0", b)
		// Half a message, then nothing: --read-timeout closes the phone
		// 1011, and its binary gets the notice.
		s.log("P0 -> the first 10 bytes of a 100-byte message")
		_ = rawFrame(r, []byte(`{"pad":"`+strings.Repeat("z", 90)+`"}`), 10)
		s.rawEnd("P0", r)
		s.expect(b)
		s.to(b, "P1", `{"unaffected":true}`)
		s.expect(p1)
	}},
	{name: "phone-cap", config: "default", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		var ps []*peer
		for j := 0; j < 16; j++ {
			ps = append(ps, s.phone(fmt.Sprintf("P%d", j), j, "S0"))
			s.learn(ps[j], b)
		}
		p16 := s.phone("P16", 16, "S0")
		s.expect(p16)
		p17 := s.phone("P17", 17, "S0", "/v2/client")
		s.expect(p17)
		// One leaves: its notice, then its place is free, then full again.
		s.close(ps[4], websocket.StatusNormalClosure, "")
		s.expect(b)
		p18 := s.phone("P18", 18, "S0")
		s.learn(p18, b)
		p19 := s.phone("P19", 19, "S0")
		s.expect(p19)
		s.quiet(b)
	}},
	{name: "binary-conflict", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p := s.phone("P0", 0, "S0")
		s.learn(p, b0)
		// The incumbent answers the probe: the newcomers get 4409.
		b1 := s.binary("B1", 1, "S0")
		s.expect(b1)
		b2 := s.binary("B2", 2, "S0", "/v2/server")
		s.expect(b2)
		// The incumbent keeps its slot and its phone.
		s.to(b0, "P0", `{"still":"yours"}`)
		s.expect(p)
		s.send(p, `{"and":"back"}`)
		s.expect(b0)
		q := s.phone("P1", 1, "S0")
		s.learn(q, b0)
		s.quiet(b0, p, q)
	}},
	{name: "conflict-slow-binary", config: "default", run: func(s *script) {
		s.rcvbuf = 4096 // what B0 has not read stays in the relay's queue
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		s.learn(p0, b0)
		// B0 takes one message every 100 ms: a ping to it waits behind the
		// frames queued for it far longer than the probe timeout (1 s),
		// but it keeps taking bytes, so it is alive to a rival on any
		// instance (the mixed topology probes it from its own instance,
		// the remote one from another): 4409, and B0 keeps its slot.
		s.slow(b0, 100*time.Millisecond)
		for k := 0; k < 40; k++ {
			s.send(p0, fmt.Sprintf(`{"k":%d,"pad":"%s"}`, k, strings.Repeat("s", cfMaxMsg-200)))
		}
		b1 := s.binary("B1", 1, "S0")
		s.expect(b1)
		for k := 0; k < 40; k++ {
			s.expect(b0)
		}
		s.to(b0, "P0", `{"still":"yours"}`)
		s.expect(p0)
		s.quiet(b0, p0)
	}},
	{name: "takeover-dead-incumbent", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		p1 := s.phone("P1", 1, "S0")
		s.learn(p0, b0)
		s.learn(p1, b0)
		// B0 stops reading: it cannot answer the conflict probe's ping.
		s.deafen(b0, func() { s.send(p0, `{"last":true}`) })
		b1 := s.binary("B1", 1, "S0")
		// Its phones are evicted 4404 wherever they are, without notices.
		s.expect(p0)
		s.expect(p1)
		s.hear(b0)
		s.expect(b0)
		s.quiet(b1)
		p2 := s.phone("P2", 2, "S0")
		s.learn(p2, b1)
		s.to(b1, "P2", `{"new":"binary"}`)
		s.expect(p2)
	}},
	{name: "grace-reclaim", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		p1 := s.phone("P1", 1, "S0")
		s.learn(p0, b0)
		s.learn(p1, b0)
		s.close(b0, websocket.StatusNormalClosure, "")
		// Grace: phones stay, may still join; their frames are dropped.
		s.quiet(p0, p1)
		s.send(p0, `{"during":"grace"}`)
		p2 := s.phone("P2", 2, "S0", "/v2/client")
		s.quiet(p0, p1, p2)
		// A phone that leaves during grace notifies nobody (the binary it
		// joined under is gone), not even the binary that reclaims.
		p4 := s.phone("P4", 4, "S0")
		s.close(p4, 4000, "gone in grace")
		// A reclaim during grace evicts the others 4404.
		b1 := s.binary("B1", 1, "S0")
		s.expect(p0)
		s.expect(p1)
		s.expect(p2)
		s.quiet(b1)
		p3 := s.phone("P3", 3, "S0")
		s.learn(p3, b1)
	}},
	{name: "grace-expiry", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		p1 := s.phone("P1", 1, "S0")
		s.learn(p0, b0)
		s.learn(p1, b0)
		s.close(b0, websocket.StatusNormalClosure, "")
		left := time.Now()
		p2 := s.phone("P2", 2, "S0")
		s.quiet(p0, p1, p2)
		// Nobody reclaims: the grace period ends, the phones are 4404.
		s.expect(p0)
		if d := time.Since(left); d < cfGrace-200*time.Millisecond {
			s.log("evicted BEFORE the grace period ended")
		} else {
			s.log("evicted after the grace period")
		}
		s.expect(p1)
		s.expect(p2)
		// The slot is gone: a phone gets 4404, a binary claims afresh.
		p3 := s.phone("P3", 3, "S0")
		s.expect(p3)
		b1 := s.binary("B1", 1, "S0")
		p4 := s.phone("P4", 4, "S0")
		s.learn(p4, b1)
		s.quiet(b1)
	}},
	{name: "oversize-binary", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		s.learn(p0, b0)
		// An envelope of exactly the cap is delivered.
		pre := fmt.Sprintf(`{"conn_id":%q,"frame":{"pad":"`, s.conn["P0"])
		s.send(b0, pre+strings.Repeat("y", cfMaxMsg-len(pre)-3)+`"}}`)
		s.expect(p0)
		// One byte more closes the binary 1009; the slot enters grace.
		s.send(b0, pre+strings.Repeat("y", cfMaxMsg-len(pre)-2)+`"}}`)
		s.expect(b0)
		s.quiet(p0)
		s.send(p0, `{"to":"nobody"}`)
		b1 := s.binary("B1", 1, "S0")
		s.expect(p0)
		s.quiet(b1)
	}},
	{name: "malformed-envelopes", config: "default", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		s.learn(p0, b0)
		// Another tenant, with a phone of its own.
		b2 := s.binary("B2", 2, "S1")
		q0 := s.phone("Q0", 1, "S1")
		s.learn(q0, b2)
		id := s.conn["P0"]
		bad := []string{
			`not json`, `[]`, `{}`, `{"frame":{}}`, `{"conn_id":""}`, `{"conn_id":7,"frame":{}}`,
			fmt.Sprintf(`{"conn_id":%q}`, id),
			fmt.Sprintf(`{"conn_id":%q,"frame":"text"}`, id),
			fmt.Sprintf(`{"conn_id":%q,"frame":[1]}`, id),
			fmt.Sprintf(`{"conn_id":%q,"close_code":1011}`, id),
			fmt.Sprintf(`{"conn_id":%q,"close_code":3000}`, id),
			fmt.Sprintf(`{"conn_id":%q,"close_code":4401.5}`, id),
			fmt.Sprintf(`{"conn_id":%q,"close_code":"4401"}`, id),
			fmt.Sprintf(`{"conn_id":%q,"close_code":5000,"frame":{}}`, id),
			fmt.Sprintf(`{"Conn_ID":%q,"frame":{}}`, id),
			`{"conn_id":"client-0000000000000000","frame":{}}`,
			fmt.Sprintf(`{"conn_id":%q,"push_wake":{"platform":"fcm","token":"t"},"frame":{}}`, id),
			`{"push_wake":{"platform":"fcm"}}`,
			// A well-formed push wake: addressed to the relay, never
			// answered (push is not configured here), never a phone's.
			`{"push_wake":{"platform":"fcm","token":"opaque-fcm-token"}}`,
			// Another tenant's phone: not reachable.
			fmt.Sprintf(`{"conn_id":%q,"frame":{"leak":true}}`, s.conn["Q0"]),
			fmt.Sprintf(`{"conn_id":%q,"close_code":4401}`, s.conn["Q0"]),
		}
		for _, m := range bad {
			s.send(b0, m)
		}
		s.write(b0, websocket.MessageBinary, fmt.Sprintf(`{"conn_id":%q,"frame":{"binary":"opcode"}}`, id))
		s.to(b0, "P0", `{"after":"errors"}`)
		s.expect(p0)
		s.quiet(b0, p0, b2, q0)
		// Both binaries are still up and routing.
		s.send(p0, `{"still":"up"}`)
		s.expect(b0)
		s.to(b2, "Q0", `{"own":"tenant"}`)
		s.expect(q0)
	}},
	{name: "token-off-by-default", config: "default", run: tokenScript},
	{name: "token-forwarding", config: "token-heartbeat", run: tokenScript},
	{name: "heartbeat-phone", config: "token-heartbeat", run: func(s *script) {
		b := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		p1 := s.phone("P1", 1, "S0")
		s.learn(p0, b)
		s.learn(p1, b)
		// P0 stops answering pings: 1011 with a notice to the binary.
		s.deafen(p0, func() { s.to(b, "P0", `{"last":true}`) })
		s.expect(b)
		s.relayClosed(p0, "phone_closed", "conn_id", s.conn["P0"])
		// The other phone is unaffected.
		s.to(b, "P1", `{"fine":true}`)
		s.expect(p1)
		s.send(p1, `{"and":"back"}`)
		s.expect(b)
	}},
	{name: "heartbeat-binary", config: "token-heartbeat", run: func(s *script) {
		b0 := s.binary("B0", 0, "S0")
		p0 := s.phone("P0", 0, "S0")
		s.learn(p0, b0)
		// B0 stops answering pings: 1011, and its slot enters grace.
		s.deafen(b0, func() { s.send(p0, `{"last":true}`) })
		s.relayClosed(b0, "binary_closed", "server_id", s.sid("S0"))
		s.quiet(p0)
		b1 := s.binary("B1", 1, "S0")
		s.expect(p0)
		p1 := s.phone("P1", 1, "S0")
		s.learn(p1, b1)
	}},
}

// tokenScript: the phone's x-pyrycode-token rides on its first envelope
// only, and only with --forward-v1-token.
func tokenScript(s *script) {
	b := s.binary("B0", 0, "S0")
	p0 := s.phone("P0", 0, "S0")
	p1 := s.phone("P1", 1, "S0", "/v2/client")
	s.learn(p0, b)
	s.learn(p1, b)
	s.send(p0, `{"second":true}`)
	s.expect(b)
	s.send(p1, `{"second":true}`)
	s.expect(b)
	s.quiet(b)
}
