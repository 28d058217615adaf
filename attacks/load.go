package attacks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// The load harness behind `make load` (attacks/cmd/relay-load): the figures
// the admission-control issue asks for, measured in one run against a
// relay it starts itself on 127.0.0.1:
//
//	(a) connections held at the global cap (--max-conns);
//	(b) refusals per second answered while clients from many loopback
//	    addresses keep upgrading over the cap;
//	(c) a legitimate binary<->phone pair's round-trip latency, p50 and
//	    p99, on an idle relay, at the cap with no flood, and during the
//	    flood.
//
// Every connection is between loopback addresses; the run is bounded in
// connections (MaxConns held plus FloodWorkers in flight) and in time
// (FloodFor plus setup), and stops the relay it started.

// LoadConfig sizes a load run. Zero fields take the defaults in
// DefaultLoadConfig.
type LoadConfig struct {
	// Binary is the relay build to start.
	Binary string
	// MaxConns is the relay's --max-conns: the harness fills it.
	MaxConns int
	// PerAddr is how many held connections each simulated address opens;
	// it must stay within the default per-IP limits (64 open, burst 20).
	PerAddr int
	// FloodWorkers upgrade over the cap concurrently, for FloodFor, each
	// attempt from the next of FloodAddrs addresses.
	FloodWorkers int
	FloodAddrs   int
	FloodFor     time.Duration
	// RTTs is the number of round trips measured idle and at the quiet cap.
	RTTs int
	// Progress gets one line per phase (nil: none).
	Progress io.Writer
}

// DefaultLoadConfig: 2000 connections held (about half a small VPS's
// default 4096, so the run fits a laptop's file-descriptor limit), flooded
// for 5 s by 32 workers rotating over 2000 fresh addresses (so the
// refusals measured are the global cap's 503s, not per-IP 429s).
func DefaultLoadConfig() LoadConfig {
	return LoadConfig{MaxConns: 2000, PerAddr: 16, FloodWorkers: 32, FloodAddrs: 2000, FloodFor: 5 * time.Second, RTTs: 300}
}

// LoadReport is what a load run measured.
type LoadReport struct {
	MaxConns int           `json:"max_conns"`
	Held     int           `json:"held"`         // connections open at the cap (flood + pair)
	HoldTook time.Duration `json:"hold_took_ns"` // time to open them

	FloodFor        time.Duration `json:"flood_for_ns"`
	Refused503      int           `json:"refused_503"`
	Refused429      int           `json:"refused_429"`
	AdmittedOverCap int           `json:"admitted_over_cap"` // must be 0
	FloodErrors     int           `json:"flood_errors"`
	RefusedPerSec   float64       `json:"refused_per_sec"`

	IdleP50   time.Duration `json:"idle_p50_ns"`
	IdleP99   time.Duration `json:"idle_p99_ns"`
	AtCapP50  time.Duration `json:"at_cap_p50_ns"`
	AtCapP99  time.Duration `json:"at_cap_p99_ns"`
	FloodP50  time.Duration `json:"flood_p50_ns"`
	FloodP99  time.Duration `json:"flood_p99_ns"`
	FloodRTTs int           `json:"flood_rtts"`

	RelayGoroutinesAtCap float64 `json:"relay_goroutines_at_cap"`
	RelayRSSAtCap        float64 `json:"relay_rss_at_cap"`
}

// Ratio is the flood p99 over the idle p99.
func (r LoadReport) Ratio() float64 { return float64(r.FloodP99) / float64(max(r.IdleP99, 1)) }

// ErrLoadConfig reports an unusable LoadConfig.
var ErrLoadConfig = errors.New("attacks: invalid load configuration")

// RunLoad starts the relay, runs the three measurements and stops it.
func RunLoad(ctx context.Context, cfg LoadConfig) (LoadReport, error) {
	def := DefaultLoadConfig()
	if cfg.MaxConns == 0 {
		cfg.MaxConns = def.MaxConns
	}
	if cfg.PerAddr == 0 {
		cfg.PerAddr = def.PerAddr
	}
	if cfg.FloodWorkers == 0 {
		cfg.FloodWorkers = def.FloodWorkers
	}
	if cfg.FloodAddrs == 0 {
		cfg.FloodAddrs = def.FloodAddrs
	}
	if cfg.FloodFor == 0 {
		cfg.FloodFor = def.FloodFor
	}
	if cfg.RTTs == 0 {
		cfg.RTTs = def.RTTs
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	switch {
	case cfg.Binary == "":
		return LoadReport{}, fmt.Errorf("%w: no relay binary", ErrLoadConfig)
	case cfg.MaxConns < 10 || cfg.MaxConns > 10000:
		return LoadReport{}, fmt.Errorf("%w: max conns %d outside 10..10000", ErrLoadConfig, cfg.MaxConns)
	case cfg.PerAddr < 1 || cfg.PerAddr > 20:
		return LoadReport{}, fmt.Errorf("%w: %d held per address outside 1..20 (the default burst)", ErrLoadConfig, cfg.PerAddr)
	case cfg.FloodFor > 30*time.Second || cfg.FloodWorkers > 256 || cfg.FloodAddrs > 50000:
		return LoadReport{}, fmt.Errorf("%w: flood bounded to 30 s, 256 workers, 50000 addresses", ErrLoadConfig)
	}
	rep := LoadReport{MaxConns: cfg.MaxConns, FloodFor: cfg.FloodFor}

	p, err := StartProcess(ctx, cfg.Binary, "serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--max-conns", fmt.Sprint(cfg.MaxConns), "--max-conns-per-ip", "64", "--upgrade-rate", "2", "--upgrade-burst", "20")
	if err != nil {
		if p != nil {
			return rep, fmt.Errorf("start relay: %w; log: %s", err, tail(p.LogText(), 400))
		}
		return rep, fmt.Errorf("start relay: %w", err)
	}
	defer p.Stop()
	t := &Target{Base: p.URL}
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return rep, err
	}
	fmt.Fprintf(cfg.Progress, "relay on %s: --max-conns %d --max-conns-per-ip 64 --upgrade-rate 2 --upgrade-burst 20\n", p.Addr, cfg.MaxConns)

	pair, err := newSession(ctx, t)
	if err != nil {
		return rep, fmt.Errorf("legitimate pair: %w", err)
	}
	defer pair.Close()
	ph, err := pair.addPhone(nil)
	if err != nil {
		return rep, fmt.Errorf("legitimate pair: %w", err)
	}
	rtts := func(n int) ([]time.Duration, error) {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			d, err := pair.roundTrip(ph, 5*time.Second)
			if err != nil {
				return ds, err
			}
			ds = append(ds, d)
		}
		return ds, nil
	}

	// (c) idle.
	idle, err := rtts(cfg.RTTs)
	if err != nil {
		return rep, fmt.Errorf("idle round trips: %w", err)
	}
	rep.IdleP50, rep.IdleP99 = percentile(idle, 50), percentile(idle, 99)
	fmt.Fprintf(cfg.Progress, "idle: %d round trips, p50 %s p99 %s\n", len(idle), ms(rep.IdleP50), ms(rep.IdleP99))

	// (a) fill the cap.
	held, took, err := fillCap(ctx, t, cfg.MaxConns-2, cfg.PerAddr)
	defer closeAll(held)
	if err != nil {
		return rep, err
	}
	rep.Held, rep.HoldTook = len(held)+2, took
	if v, err := m.scrape(ctx); err == nil {
		rep.RelayGoroutinesAtCap, rep.RelayRSSAtCap = v[mGoroutines], v[mRSS]
	}
	fmt.Fprintf(cfg.Progress, "at the cap: %d connections held (opened in %v); relay goroutines %.0f, RSS %s\n",
		rep.Held, took.Round(time.Millisecond), rep.RelayGoroutinesAtCap, mib(rep.RelayRSSAtCap))
	quiet, err := rtts(cfg.RTTs)
	if err != nil {
		return rep, fmt.Errorf("round trips at the cap: %w", err)
	}
	rep.AtCapP50, rep.AtCapP99 = percentile(quiet, 50), percentile(quiet, 99)
	fmt.Fprintf(cfg.Progress, "at the cap, no flood: p50 %s p99 %s\n", ms(rep.AtCapP50), ms(rep.AtCapP99))

	// (b) flood over the cap, (c) during it.
	end := time.Now().Add(cfg.FloodFor)
	var n503, n429, n101, nErr, seq atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cfg.FloodWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				src := srcAddr(cfg.MaxConns/cfg.PerAddr + 10 + int(seq.Add(1))%cfg.FloodAddrs)
				u, err := t.upgradeFrom(ctx, src, nil, "/v1/server", binaryHeaders(newServerID()))
				switch {
				case err != nil:
					nErr.Add(1)
				case u.Status == http.StatusServiceUnavailable:
					n503.Add(1)
				case u.Status == http.StatusTooManyRequests:
					n429.Add(1)
				default:
					n101.Add(1)
					u.Close()
				}
			}
		}()
	}
	var during []time.Duration
	var pairErr error
	for time.Now().Before(end) {
		d, err := pair.roundTrip(ph, 5*time.Second)
		if err != nil {
			pairErr = err
			break
		}
		during = append(during, d)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if pairErr != nil {
		return rep, fmt.Errorf("legitimate pair during the flood: %w", pairErr)
	}
	rep.Refused503, rep.Refused429, rep.AdmittedOverCap, rep.FloodErrors = int(n503.Load()), int(n429.Load()), int(n101.Load()), int(nErr.Load())
	rep.RefusedPerSec = float64(rep.Refused503+rep.Refused429) / elapsed.Seconds()
	rep.FloodP50, rep.FloodP99, rep.FloodRTTs = percentile(during, 50), percentile(during, 99), len(during)
	fmt.Fprintf(cfg.Progress, "flood: %d workers over %d addresses for %v: %d x 503, %d x 429, %d admitted, %d errors (%.0f refusals/s); pair p50 %s p99 %s over %d trips\n",
		cfg.FloodWorkers, cfg.FloodAddrs, elapsed.Round(time.Millisecond), rep.Refused503, rep.Refused429, rep.AdmittedOverCap, rep.FloodErrors,
		rep.RefusedPerSec, ms(rep.FloodP50), ms(rep.FloodP99), rep.FloodRTTs)
	return rep, nil
}

// fillCap opens n held binaries, perAddr per simulated address, 16 at a time.
func fillCap(ctx context.Context, t *Target, n, perAddr int) ([]upgrade, time.Duration, error) {
	start := time.Now()
	out := make([]upgrade, n)
	errc := make(chan error, 1)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				u, err := t.holdBinary(ctx, srcAddr(i/perAddr))
				if err == nil && u.Status != http.StatusSwitchingProtocols {
					err = fmt.Errorf("answered %d", u.Status)
				}
				if err != nil {
					select {
					case errc <- fmt.Errorf("held connection %d of %d: %w", i+1, n, err):
					default:
					}
					return
				}
				out[i] = u
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return out, time.Since(start), err
	default:
	}
	return out, time.Since(start), nil
}

// RenderLoad writes a benchmark-style summary of r.
func RenderLoad(w io.Writer, r LoadReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "held at the global cap\t%d / %d conns\t(opened in %v; relay %.0f goroutines, RSS %s)\n",
		r.Held, r.MaxConns, r.HoldTook.Round(time.Millisecond), r.RelayGoroutinesAtCap, mib(r.RelayRSSAtCap))
	fmt.Fprintf(tw, "refusals over the cap\t%.0f /s\t(%d x 503, %d x 429 in %v; %d admitted over the cap; %d client errors)\n",
		r.RefusedPerSec, r.Refused503, r.Refused429, r.FloodFor, r.AdmittedOverCap, r.FloodErrors)
	fmt.Fprintf(tw, "pair RTT idle\tp50 %s\tp99 %s\n", ms(r.IdleP50), ms(r.IdleP99))
	fmt.Fprintf(tw, "pair RTT at cap, quiet\tp50 %s\tp99 %s\n", ms(r.AtCapP50), ms(r.AtCapP99))
	fmt.Fprintf(tw, "pair RTT during flood\tp50 %s\tp99 %s\t(%d trips; p99 x%.1f idle)\n", ms(r.FloodP50), ms(r.FloodP99), r.FloodRTTs, r.Ratio())
	return tw.Flush()
}
