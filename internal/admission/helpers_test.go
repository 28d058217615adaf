package admission

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// fakeClock is an injectable Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testOptions are small, valid options with the rate limit effectively off;
// each test turns on what it exercises.
func testOptions() Options {
	o := DefaultOptions()
	o.MaxConns = 100
	o.MaxConnsPerIP = 100
	o.UpgradeRate = rate.Inf
	o.UpgradeBurst = 1
	o.MaxTrackedIPs = 1000
	return o
}

func newController(t testing.TB, o Options) *Controller {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// blocker is a handler that holds each request until release is closed,
// like a WebSocket handler holds its connection.
type blocker struct {
	entered chan netip.Addr
	release chan struct{}
	once    sync.Once
}

// Release lets every held and future request finish.
func (b *blocker) Release() { b.once.Do(func() { close(b.release) }) }

func newBlocker() *blocker {
	return &blocker{entered: make(chan netip.Addr, 1024), release: make(chan struct{})}
}

func (b *blocker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ip, _ := FromContext(r.Context())
	b.entered <- ip
	<-b.release
	w.WriteHeader(http.StatusOK)
}

// waitEntered waits until n requests are inside the handler.
func (b *blocker) waitEntered(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-b.entered:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d requests reached the handler", i, n)
		}
	}
}

// echoIP answers 200 with the resolved client address as the body.
var echoIP = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	ip, ok := FromContext(r.Context())
	if !ok {
		http.Error(w, "no ip", http.StatusInternalServerError)
		return
	}
	io.WriteString(w, ip.String())
})

// startServer serves h on 127.0.0.1:0 (optionally on a wrapped listener).
func startServer(t *testing.T, h http.Handler, wrap func(net.Listener) net.Listener) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if wrap != nil {
		s.Listener = wrap(s.Listener)
	}
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// clientFrom returns an HTTP client whose connections come from srcIP
// (a loopback address such as 127.0.0.2), one connection per request.
func clientFrom(srcIP string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcIP)}, Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext:       d.DialContext,
			DisableKeepAlives: true,
		},
	}
}

// result is the status, Retry-After and body of one answered request.
type result struct {
	status     int
	retryAfter string
	body       string
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header.Get("Retry-After"), strings.TrimSpace(string(b))}
}

// getAsync starts a request that the blocker will hold; its result arrives
// on the returned channel once released.
func getAsync(t *testing.T, c *http.Client, url string) <-chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			ch <- result{status: -1, body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		ch <- result{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
	}()
	return ch
}

func mustPrefixes(t testing.TB, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting: " + msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wantResult(t *testing.T, got result, status int, retryAfter string) {
	t.Helper()
	if got.status != status || got.retryAfter != retryAfter {
		t.Fatalf("got status %d Retry-After %q, want %d %q", got.status, got.retryAfter, status, retryAfter)
	}
	if status >= 400 && got.body != "" {
		t.Fatalf("refusal body = %q, want empty", got.body)
	}
}
