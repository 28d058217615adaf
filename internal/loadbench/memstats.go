package loadbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// MemStats is the Go runtime's own account of a server process's memory,
// scraped from its Prometheus text (the relay's --metrics-listen, the
// forwarder's /memstats): where the resident memory per connection goes.
type MemStats struct {
	HeapInuse  float64 `json:"heap_inuse_bytes"`
	HeapAlloc  float64 `json:"heap_alloc_bytes"`
	StackInuse float64 `json:"stack_inuse_bytes"`
	NextGC     float64 `json:"next_gc_bytes"`
	Goroutines float64 `json:"goroutines"`
	NumGC      float64 `json:"gc_count"`
}

// memStatNames maps the Prometheus Go collector's names to MemStats.
var memStatNames = map[string]func(*MemStats) *float64{
	"go_memstats_heap_inuse_bytes":  func(m *MemStats) *float64 { return &m.HeapInuse },
	"go_memstats_heap_alloc_bytes":  func(m *MemStats) *float64 { return &m.HeapAlloc },
	"go_memstats_stack_inuse_bytes": func(m *MemStats) *float64 { return &m.StackInuse },
	"go_memstats_next_gc_bytes":     func(m *MemStats) *float64 { return &m.NextGC },
	"go_goroutines":                 func(m *MemStats) *float64 { return &m.Goroutines },
	"go_gc_duration_seconds_count":  func(m *MemStats) *float64 { return &m.NumGC },
}

// scrapeMem reads url's Prometheus text; nil when it cannot.
func scrapeMem(ctx context.Context, url string) *MemStats {
	if url == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	m, n := parseMem(resp.Body)
	if n == 0 {
		return nil
	}
	return m
}

func parseMem(r io.Reader) (*MemStats, int) {
	m := &MemStats{}
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if f := memStatNames[name]; f != nil {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
				*f(m) = v
				found++
			}
		}
	}
	return m, found
}

// serveMemStats answers the forwarder's /memstats in the names the relay's
// metrics use, so both processes are read the same way.
func serveMemStats(w http.ResponseWriter) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "go_memstats_heap_inuse_bytes %d\n", ms.HeapInuse)
	fmt.Fprintf(w, "go_memstats_heap_alloc_bytes %d\n", ms.HeapAlloc)
	fmt.Fprintf(w, "go_memstats_stack_inuse_bytes %d\n", ms.StackInuse)
	fmt.Fprintf(w, "go_memstats_next_gc_bytes %d\n", ms.NextGC)
	fmt.Fprintf(w, "go_goroutines %d\n", runtime.NumGoroutine())
	fmt.Fprintf(w, "go_gc_duration_seconds_count %d\n", ms.NumGC)
}
