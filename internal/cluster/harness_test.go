package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// The cluster tests run a real NATS server (embedded, JetStream on,
// loopback, temporary store) and three REAL relay processes built from
// cmd/relay, and talk to them as binaries and phones over real WebSockets.

var (
	buildDir  string
	buildOnce sync.Once
	relayBin  string
	buildErr  error
)

// testParallel is how many of this package's parallel tests run at once
// unless -parallel says otherwise. Each starts its own NATS and relays and
// spends its time waiting on leases, grace periods, probes and NATS's
// reconnects, not on the CPU, so go test's default (GOMAXPROCS: 2 on CI)
// would leave most of that waiting in series. These stay serial (they run
// first, alone): those whose bounds are tight against the store's timers (a
// crashed owner's claim within lease + slack, a live owner's claim at the
// minimum lease, a release within half a lease), and two that a starved
// instance can fail (the property test, whose phone may join the old
// owner's grace slot right after a reclaim elsewhere and get 4404; the
// SIGSTOPped owner's resumption): the CPU the parallel ones take would
// fail them more often.
const testParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", strconv.Itoa(max(testParallel, runtime.GOMAXPROCS(0))))
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// build compiles cmd/relay once per test binary, on first use (a run that
// selects no cluster test builds nothing). -race: the instances' own
// cross-instance code runs under the race detector too.
func build() (string, error) {
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "relay-cluster-")
		if buildErr != nil {
			return
		}
		relayBin = filepath.Join(buildDir, "relay")
		cmd := exec.Command("go", "build", "-race", "-o", relayBin, "./cmd/relay")
		cmd.Dir = "../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	return relayBin, buildErr
}

// Short timers so that leases, grace and probes show up in about a second.
const (
	lease = 1500 * time.Millisecond
	grace = 2 * time.Second
)

type env struct {
	t      *testing.T
	nats   *natstest.Server
	relays []*instance
}

type instance struct {
	id   string
	proc *attacks.Process
	ws   string // ws://host:port
}

// newEnv starts NATS and n relays (ids a, b, c...).
func newEnv(t *testing.T, n int, extra ...string) *env {
	t.Helper()
	_, err := build()
	require.NoError(t, err)
	ns, err := natstest.Start(t.TempDir(), 0)
	require.NoError(t, err)
	e := &env{t: t, nats: ns}
	t.Cleanup(func() {
		// The clients closed first (their cleanups run before this one):
		// with no queued work left, every live instance's budget must be
		// back to zero, stub and proxy queues included (TM-DOS-8).
		if !t.Failed() {
			for _, r := range e.relays {
				if r.proc != nil && !r.proc.Exited() {
					if err := r.proc.QueuedBytesSettled(); err != nil {
						t.Errorf("relay %s: %v", r.id, err)
					}
					// And no phone is left anywhere: not in a slot here
					// (local phones and stubs), not as a proxy socket.
					for _, g := range []string{"relay_phones", "relay_cluster_proxies"} {
						last := -1.0
						if !pollUntil(5*time.Second, func() bool {
							v, err := r.proc.Metric(context.Background(), g)
							last = v
							return err == nil && v == 0
						}) {
							t.Errorf("relay %s: %s = %v, not 0, after every client closed", r.id, g, last)
						}
					}
				}
			}
		}
		for _, r := range e.relays {
			if r.proc != nil && !r.proc.Exited() {
				r.proc.Kill()
			}
		}
		ns.Stop()
		if t.Failed() {
			for _, r := range e.relays {
				if r.proc != nil {
					t.Logf("relay %s log:\n%s", r.id, tailLines(r.proc.LogText(), 60))
				}
			}
		}
	})
	for i := 0; i < n; i++ {
		e.start(string(rune('a'+i)), extra...)
	}
	return e
}

func (e *env) start(id string, extra ...string) *instance {
	e.t.Helper()
	return e.startVia(id, e.nats.URL(), extra...)
}

// startLinked starts relay id with its NATS connection through a CutLink
// the test can cut, blackhole and heal.
func (e *env) startLinked(id string, extra ...string) (*instance, *attacks.CutLink) {
	e.t.Helper()
	link, err := attacks.NewCutLink(e.nats.URL())
	require.NoError(e.t, err)
	e.t.Cleanup(link.Close)
	return e.startVia(id, link.URL(), extra...), link
}

// startVia starts relay id connecting to NATS at natsURL.
func (e *env) startVia(id, natsURL string, extra ...string) *instance {
	e.t.Helper()
	p, err := launch(id, natsURL, extra...)
	if err != nil {
		if p != nil {
			e.t.Fatalf("start relay %s: %v\n%s", id, err, p.LogText())
		}
		e.t.Fatalf("start relay %s: %v", id, err)
	}
	in := &instance{id: id, proc: p, ws: "ws://" + p.Addr}
	e.relays = append(e.relays, in)
	return in
}

// launch starts relay id connecting to NATS at natsURL (safe to call off
// the test's goroutine; startVia records it in the env).
func launch(id, natsURL string, extra ...string) (*attacks.Process, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"serve", "--insecure-listen", "127.0.0.1:0",
		"--cluster-nats", natsURL, "--instance-id", id, "--cluster-lease", lease.String(),
		"--grace-period", grace.String(), "--probe-timeout", "500ms", "--close-timeout", "300ms",
		"--upgrade-rate", "1000", "--upgrade-burst", "1000", "--log-level", "debug",
		"--metrics-listen", "127.0.0.1:0"}
	return attacks.StartProcess(ctx, relayBin, append(args, extra...)...)
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// conn is one WebSocket with a background reader.
type conn struct {
	paused atomic.Bool // the reader stops before its next Read
	ws     *websocket.Conn
	msgs   chan []byte
	closed chan struct{}
	code   websocket.StatusCode // valid after closed
	reason string               // the close reason, valid after closed
}

func dial(t *testing.T, url string, h http.Header) *conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	require.NoError(t, err)
	ws.SetReadLimit(1 << 20)
	c := &conn{ws: ws, msgs: make(chan []byte, 1<<16), closed: make(chan struct{})}
	go func() {
		defer close(c.closed)
		for {
			if c.paused.Load() {
				return // leaves the socket open, unread: no more pongs
			}
			_, data, err := ws.Read(context.Background())
			if err != nil {
				c.code = websocket.CloseStatus(err)
				var ce websocket.CloseError
				if errors.As(err, &ce) {
					c.reason = ce.Reason
				}
				return
			}
			c.msgs <- data
		}
	}()
	t.Cleanup(func() { _ = ws.CloseNow() })
	return c
}

// binaryAt connects a binary and waits until the relay logged its claim
// (or the connection ended: a refused claim).
func binaryAt(t *testing.T, in *instance, serverID string) *conn {
	t.Helper()
	before := in.claims(serverID)
	c := dialBinary(t, in, serverID)
	if !pollUntil(10*time.Second, func() bool {
		select {
		case <-c.closed:
			return true
		default:
		}
		return in.claims(serverID) > before
	}) {
		t.Fatalf("binary for %s on %s neither claimed nor closed", serverID, in.id)
	}
	return c
}

// claims counts the relay's binary_claimed log lines for serverID.
func (in *instance) claims(serverID string) int {
	n := 0
	for _, l := range in.proc.Log() {
		if strings.Contains(l, `"event":"binary_claimed"`) && strings.Contains(l, `"server_id":"`+serverID+`"`) {
			n++
		}
	}
	return n
}

func dialBinary(t *testing.T, in *instance, serverID string) *conn {
	t.Helper()
	h := http.Header{}
	h.Set("x-pyrycode-server", serverID)
	h.Set("x-pyrycode-version", "test")
	h.Set("user-agent", "cluster-test")
	return dial(t, in.ws+"/v1/server", h)
}

func phoneAt(t *testing.T, in *instance, serverID string) *conn {
	t.Helper()
	h := http.Header{}
	h.Set("x-pyrycode-server", serverID)
	h.Set("x-pyrycode-token", "tok")
	h.Set("user-agent", "cluster-test")
	return dial(t, in.ws+"/v1/client", h)
}

// closeCode waits for the connection's end and returns its close code.
func (c *conn) closeCode(t *testing.T, d time.Duration) websocket.StatusCode {
	t.Helper()
	select {
	case <-c.closed:
		return c.code
	case <-time.After(d):
		t.Fatalf("connection still open after %v", d)
		return 0
	}
}

// isOpen reports whether the connection is still open after d.
func (c *conn) isOpen(d time.Duration) bool {
	select {
	case <-c.closed:
		return false
	case <-time.After(d):
		return true
	}
}

func (c *conn) send(t *testing.T, v any) {
	t.Helper()
	require.NoError(t, c.trySend(v))
}

func (c *conn) trySend(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, b)
}

var errTimeout = errors.New("timeout")

func (c *conn) next(d time.Duration) ([]byte, error) {
	select {
	case m := <-c.msgs:
		return m, nil
	case <-c.closed:
		select {
		case m := <-c.msgs:
			return m, nil
		default:
		}
		return nil, fmt.Errorf("closed %d", c.code)
	case <-time.After(d):
		return nil, errTimeout
	}
}

type envelope struct {
	ConnID    string          `json:"conn_id"`
	Frame     json.RawMessage `json:"frame"`
	CloseCode int             `json:"close_code"`
	Token     string          `json:"token"`
}

// nextEnvelope reads the binary's next envelope.
func (c *conn) nextEnvelope(t *testing.T, d time.Duration) envelope {
	t.Helper()
	m, err := c.next(d)
	require.NoError(t, err)
	var e envelope
	require.NoError(t, json.Unmarshal(m, &e))
	return e
}

// hello makes p send one frame and returns its conn_id as b sees it.
func hello(t *testing.T, b, p *conn) string {
	t.Helper()
	p.send(t, map[string]any{"hello": true})
	e := b.nextEnvelope(t, 5*time.Second)
	require.JSONEq(t, `{"hello":true}`, string(e.Frame))
	return e.ConnID
}

// roundTrip checks that b reaches p (conn_id id) and back.
func roundTrip(t *testing.T, b, p *conn, id string) {
	t.Helper()
	b.send(t, map[string]any{"conn_id": id, "frame": map[string]any{"ping": id}})
	m, err := p.next(5 * time.Second)
	require.NoError(t, err)
	require.JSONEq(t, fmt.Sprintf(`{"ping":%q}`, id), string(m))
	p.send(t, map[string]any{"pong": id})
	e := b.nextEnvelope(t, 5*time.Second)
	require.Equal(t, id, e.ConnID)
	require.JSONEq(t, fmt.Sprintf(`{"pong":%q}`, id), string(e.Frame))
}

// pollUntil retries f every 50 ms until it returns true or d passes.
func pollUntil(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// tryBinary dials a binary and reports whether it kept its claim (no close
// within settle) and, if not, the close code.
func tryBinary(t *testing.T, in *instance, serverID string, settle time.Duration) (*conn, websocket.StatusCode) {
	t.Helper()
	b := binaryAt(t, in, serverID)
	if b.isOpen(settle) {
		return b, 0
	}
	return nil, b.code
}

var idSeq struct {
	sync.Mutex
	n int
}

func newID(prefix string) string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e6, idSeq.n)
}
