package attacks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Reading the /metrics listener of a relay this package started, and
// figures for evidence lines.

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

// text returns the /metrics page as served.
func (m *metricsScraper) text(ctx context.Context) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	resp, err := m.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return string(b), err
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
