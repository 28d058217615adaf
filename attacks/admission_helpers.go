package attacks

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Helpers for the admission-control scenarios (ATK-CONN-FLOOD,
// ATK-PER-IP-FLOOD, ATK-RETRY-STORM, ATK-QUEUE-CEILING, ATK-SPOOF-IP) and
// the load harness: upgrades from chosen loopback source addresses, with
// no retry on 429/503 (the refusal is what is being measured), optional
// PROXY preambles, and /metrics scraping of a relay this package started.

// srcAddr is the i-th simulated client address: 127.0.0.2, 127.0.0.3, …,
// 127.0.0.251, then 127.0.1.2, …. Every one is on loopback (127.0.0.0/8
// routes to lo), and none is 127.0.0.1, which scenarios keep for the
// "trusted proxy" peer.
func srcAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, byte(i / 250), byte(2 + i%250)})
}

// errNotLoopback: a scenario tried to bind a simulated client address
// towards a target that is not on loopback. Simulated addresses are for
// local runs only.
var errNotLoopback = errors.New("attacks: simulated source addresses need a loopback target")

// loopbackTarget reports whether t's host is a loopback address.
func (t *Target) loopbackTarget() bool {
	a, err := netip.ParseAddr(t.Base.Hostname())
	return err == nil && a.IsLoopback()
}

// hostPort is the target's host:port, with the scheme's default port.
func (t *Target) hostPort() string {
	if t.Base.Port() != "" {
		return t.Base.Host
	}
	if t.Base.Scheme == "https" {
		return net.JoinHostPort(t.Base.Hostname(), "443")
	}
	return net.JoinHostPort(t.Base.Hostname(), "80")
}

// dialFrom opens TCP to the target from src (the zero Addr: the system's
// choice), writes preamble (a PROXY header, before any TLS), then does TLS
// when the target is https.
func (t *Target) dialFrom(ctx context.Context, src netip.Addr, preamble []byte) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if src.IsValid() {
		if !src.IsLoopback() || !t.loopbackTarget() {
			return nil, errNotLoopback
		}
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	c, err := d.DialContext(ctx, "tcp", t.hostPort())
	if err != nil {
		return nil, err
	}
	if len(preamble) > 0 {
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(preamble); err != nil {
			c.Close()
			return nil, err
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
	if cfg := t.tlsConfig(); cfg != nil {
		tc := tls.Client(c, cfg)
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			c.Close()
			return nil, err
		}
		return tc, nil
	}
	return c, nil
}

// upgrade is one WebSocket upgrade attempt, never retried.
type upgrade struct {
	Status     int    // HTTP status; 0 when no response could be read
	RetryAfter string // the Retry-After header as sent
	WS         *rawWS // the open socket on 101 (the caller closes it), else nil
}

// retryAfterSecs parses Retry-After as whole seconds (-1 when absent or odd).
func (u upgrade) retryAfterSecs() int {
	n, err := strconv.Atoi(strings.TrimSpace(u.RetryAfter))
	if err != nil {
		return -1
	}
	return n
}

// Close closes the socket of an accepted upgrade.
func (u upgrade) Close() {
	if u.WS != nil {
		u.WS.c.Close()
	}
}

// upgradeFrom sends one upgrade request for path from src, after preamble,
// and reads the answer. A transport error (refused, reset, no response)
// comes back as err with Status 0.
func (t *Target) upgradeFrom(ctx context.Context, src netip.Addr, preamble []byte, path string, h http.Header) (upgrade, error) {
	c, err := t.dialFrom(ctx, src, preamble)
	if err != nil {
		return upgrade{}, err
	}
	hdr := wsUpgradeHeaders()
	for k, vs := range h {
		for _, v := range vs {
			hdr = append(hdr, [2]string{k, v})
		}
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(t.buildRequest("GET", path, hdr)); err != nil {
		c.Close()
		return upgrade{}, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return upgrade{}, err
	}
	u := upgrade{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		_ = c.SetDeadline(time.Time{})
		u.WS = &rawWS{c: c, br: br}
		return u, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	c.Close()
	return u, nil
}

// healthzFrom is GET /healthz from src (after preamble) on a fresh
// connection; it returns the status code. The request says Connection:
// close and the socket is read to EOF, so its slot at the relay is free
// when this returns.
func (t *Target) healthzFrom(ctx context.Context, src netip.Addr, preamble []byte) (int, error) {
	c, err := t.dialFrom(ctx, src, preamble)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(t.buildRequest("GET", "/healthz", nil)); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, _ = io.Copy(io.Discard, br)
	return resp.StatusCode, nil
}

// holdBinary claims a fresh server-id over a raw socket from src and keeps
// it: the cheapest connection that counts against every cap.
func (t *Target) holdBinary(ctx context.Context, src netip.Addr) (upgrade, error) {
	return t.upgradeFrom(ctx, src, nil, "/v1/server", binaryHeaders(newServerID()))
}

// orphanPhone is an upgrade of a phone to a server-id nobody holds: the
// relay accepts it and closes it 4404.
func orphanPhoneHeaders() http.Header { return phoneHeaders(newServerID(), "tok-"+randHex(8)) }

// closeAll closes every accepted upgrade in us.
func closeAll(us []upgrade) {
	for _, u := range us {
		u.Close()
	}
}

// metricsAddr is the address of p's metrics listener, from its log.
func metricsAddr(p *Process) (string, bool) {
	for _, line := range p.Log() {
		if a, ok := listeningAddr(line, "metrics"); ok {
			return a, true
		}
	}
	return "", false
}

// metricsScraper reads the relay's /metrics (Prometheus text format).
type metricsScraper struct {
	url string
	hc  *http.Client
}

// newMetricsScraper finds p's metrics listener (started with
// --metrics-listen 127.0.0.1:0). The "listening" lines are logged together,
// so it is there once the public one is.
func newMetricsScraper(ctx context.Context, p *Process) (*metricsScraper, error) {
	var addr string
	if !pollUntil(ctx, 5*time.Second, 20*time.Millisecond, func() bool {
		var ok bool
		addr, ok = metricsAddr(p)
		return ok
	}) {
		return nil, errors.New("relay logged no metrics listener")
	}
	return &metricsScraper{url: "http://" + addr + "/metrics", hc: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}}, nil
}

// scrape returns every sample keyed by its series as printed, e.g.
// `relay_requests_rejected_total{reason="rate_limited"}` or `go_goroutines`.
func (m *metricsScraper) scrape(ctx context.Context) (map[string]float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	resp, err := m.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// value scrapes one series (NaN-free: a missing series is an error).
func (m *metricsScraper) value(ctx context.Context, series string) (float64, error) {
	all, err := m.scrape(ctx)
	if err != nil {
		return 0, err
	}
	v, ok := all[series]
	if !ok {
		return 0, fmt.Errorf("metric %s not exported", series)
	}
	return v, nil
}

// stableValue waits until series has read the same for stableReads scrapes
// in a row (the relay's writers have filled the kernel's socket buffers
// and block) and returns it.
func (m *metricsScraper) stableValue(ctx context.Context, series string) (float64, error) {
	const stableReads = 5
	last, same := -1.0, 0
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		v, err := m.value(ctx, series)
		if err != nil {
			return 0, err
		}
		if v == last {
			if same++; same >= stableReads {
				return v, nil
			}
		} else {
			last, same = v, 1
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0, fmt.Errorf("%s never settled (last %v)", series, last)
}

// Series the admission scenarios read.
const (
	mGoroutines  = "go_goroutines"
	mRSS         = "process_resident_memory_bytes"
	mQueuedBytes = "relay_queued_bytes"
	mRejRate     = `relay_requests_rejected_total{reason="rate_limited"}`
	mRejPerIP    = `relay_requests_rejected_total{reason="per_ip_cap"}`
	mRejGlobal   = `relay_requests_rejected_total{reason="global_cap"}`
	mDropCeiling = `relay_frames_dropped_total{reason="relay_backlog_full"}`
)

// percentile returns the p-th percentile (0..100, nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(p/100*float64(len(s))+0.999999) - 1
	k = max(0, min(k, len(s)-1))
	return s[k]
}

// ms renders d in milliseconds with two decimals.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + "ms"
}

// mib renders n bytes in MiB with one decimal.
func mib(n float64) string { return strconv.FormatFloat(n/(1<<20), 'f', 1, 64) + "MiB" }

// localBench is what the local-only flood scenarios share: a dedicated relay
// started with the scenario's flags and a metrics listener, a scraper for
// it, and a legitimate binary<->phone pair (connected first, from
// 127.0.0.1) that must keep relaying throughout the attack.
type localBench struct {
	tgt   *Target
	proc  *Process
	m     *metricsScraper
	pair  *session
	phone *phone
	stop  func()
}

func newLocalBench(ctx context.Context, t *Target, flags ...string) (*localBench, error) {
	tgt, p, stop, err := dedicated(ctx, t, append(flags, "--metrics-listen", "127.0.0.1:0")...)
	if err != nil {
		return nil, err
	}
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		stop()
		return nil, fmt.Errorf("setup: %w", err)
	}
	pair, err := newSession(ctx, tgt)
	if err != nil {
		stop()
		return nil, fmt.Errorf("legitimate pair: %w", err)
	}
	ph, err := pair.addPhone(nil)
	if err != nil {
		pair.Close()
		stop()
		return nil, fmt.Errorf("legitimate pair: %w", err)
	}
	return &localBench{tgt: tgt, proc: p, m: m, pair: pair, phone: ph, stop: func() { pair.Close(); stop() }}, nil
}
