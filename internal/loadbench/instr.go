package loadbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The instruction suite counts the user-space instructions each server
// executes per message (and the relay per ping), under valgrind's
// callgrind: a count that does not depend on what else the machine runs,
// unlike CPU time, so two builds of the relay (PGO, a change) or the relay
// and the forwarder compare exactly on a shared machine. It leaves out
// the kernel's share (system calls, TCP), which the traffic runs' CPU
// figures include; the system calls per message they also report cover
// that side.
//
// Each server runs under valgrind (GOMAXPROCS=1; GODEBUG turns off the
// runtime's asynchronous preemption signals and RDTSCP, neither of which
// valgrind 3.19 handles; GOGC=off, because a window under valgrind lasts
// fifty times longer than natively and would meet the runtime's forced
// two-minute collection, which the native run does not: both servers
// allocate nothing per message in steady state); the harness sends a warm-up quota, waits for it
// to be delivered, zeroes the counters (callgrind_control -z), sends an
// exact quota, waits for every message, and dumps (-d).

// InstrResult is one counted window.
type InstrResult struct {
	Workload Workload `json:"workload"`
	Server   string   `json:"server"` // relay, forwarder or relay_b
	Binary   string   `json:"binary,omitempty"`
	// Units is the messages delivered (pings answered, for Ping) in the
	// window, Instructions what the server executed meanwhile.
	Units        int64   `json:"units"`
	Instructions int64   `json:"instructions"`
	PerUnit      float64 `json:"instructions_per_unit"`
	// Parts are the instructions per unit by part (partOrder).
	Parts map[string]float64 `json:"parts,omitempty"`
}

// InstrComparison pairs a workload's counts: instructions per message of
// each server, and the forwarder's ÷ the relay's (and the relay's ÷
// relay_b's when a second relay binary was measured).
type InstrComparison struct {
	Workload  Workload `json:"workload"`
	Relay     float64  `json:"relay"`
	Forwarder float64  `json:"forwarder,omitempty"`
	RelayB    float64  `json:"relay_b,omitempty"`
	Ratio     float64  `json:"ratio,omitempty"`   // forwarder ÷ relay
	RatioB    float64  `json:"ratio_b,omitempty"` // relay ÷ relay_b: above 1, relay_b executes fewer
}

// Ping is the instruction suite's heartbeat workload: Conns idle
// connections pinged every PingEvery; a unit is a ping answered.
const Ping = "ping"

// Server kinds of the instruction suite beyond relay and forwarder.
const kindRelayB = "relay_b"

// instrWorkloads: both directions at a few sizes, and the heartbeat.
func instrWorkloads(sizes []int) []Workload {
	var ws []Workload
	for _, kind := range []string{StreamP2B, StreamB2P} {
		for _, s := range sizes {
			ws = append(ws, Workload{Kind: kind, Size: s, Binaries: 1, PhonesPer: 16, InFlight: 8})
		}
	}
	return append(ws, Workload{Kind: Ping, Conns: 510, PhonesPer: 16})
}

// DefaultInstrSizes are the instruction suite's message sizes.
var DefaultInstrSizes = []int{128, 512, 16 << 10, 64 << 10}

// instrQuota is how many messages a counted window carries: enough that a
// window's fixed costs (the runtime's timers, the dump) are noise.
func instrQuota(size int) int64 {
	switch {
	case size <= 1<<10:
		return 3000
	case size <= 16<<10:
		return 1500
	default:
		return 500
	}
}

// valgrindArgv prefixes argv so that it runs under callgrind, writing its
// dumps to out (out.1, out.2, ... one per dump).
func valgrindArgv(out string, argv ...string) []string {
	return append([]string{"valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, "--dump-line=no"}, argv...)
}

// valgrindEnv is what a Go server needs under valgrind 3.19.
var valgrindEnv = []string{"GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off", "GOMAXPROCS=1", "GOGC=off"}

// haveValgrind reports whether the suite can run here.
func haveValgrind() error {
	for _, c := range []string{"valgrind", "callgrind_control"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found (Debian package valgrind)", c)
		}
	}
	return nil
}

// callgrind drives one server process under callgrind.
type callgrind struct {
	pid   int
	out   string
	dumps int
	keep  string // where to keep the next dump ("": not kept)
}

func (cg *callgrind) control(ctx context.Context, flag string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(cctx, "callgrind_control", flag, strconv.Itoa(cg.pid)).CombinedOutput()
	if err != nil || !strings.Contains(string(b), "OK") {
		return fmt.Errorf("callgrind_control %s %d: %v: %s", flag, cg.pid, err, b)
	}
	return nil
}

func (cg *callgrind) zero(ctx context.Context) error { return cg.control(ctx, "-z") }

// dump writes the counters since the last zero and returns their total
// and their parts; the dump is kept as keep when that is set.
func (cg *callgrind) dump(ctx context.Context) (int64, map[string]int64, error) {
	if err := cg.control(ctx, "-d"); err != nil {
		return 0, nil, err
	}
	cg.dumps++
	path := fmt.Sprintf("%s.%d", cg.out, cg.dumps)
	n, err := dumpTotal(path)
	var parts map[string]int64
	if err == nil {
		parts, err = dumpParts(path)
	}
	if err == nil && cg.keep != "" {
		if b, rerr := os.ReadFile(path); rerr == nil {
			_ = os.WriteFile(cg.keep, b, 0o644)
		}
	}
	return n, parts, err
}

// perUnit divides parts by units.
func perUnit(parts map[string]int64, units int64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range parts {
		out[k] = float64(v) / float64(units)
	}
	return out
}

// dumpTotal reads a callgrind dump's total instruction count.
func dumpTotal(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, key := range []string{"summary: ", "totals: "} {
			if v, ok := strings.CutPrefix(line, key); ok {
				return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no summary line", path)
}

// runInstr runs the instruction suite: for each server (started by
// start, under valgrind), every workload in turn on the same process.
func runInstr(ctx context.Context, d *dialer, rep *Report, ws []Workload, servers []instrServer, keepDir string, progress func(string)) error {
	keep := func(s instrServer, w Workload) string {
		if keepDir == "" {
			return ""
		}
		return filepath.Join(keepDir, strings.NewReplacer(" ", "_").Replace(s.kind+"-"+w.Name())+".callgrind")
	}
	for _, s := range servers {
		var stream []Workload
		var pings []Workload
		for _, w := range ws {
			switch {
			case w.Kind == Ping && s.pings:
				pings = append(pings, w)
			case w.Kind != Ping:
				stream = append(stream, w)
			}
		}
		// A fresh process per workload: a Go server under callgrind dies
		// of the first signal it gets (SIGPIPE from a write to a socket
		// the harness just closed, at the latest), and the runs stay
		// independent of each other's heap.
		for _, w := range stream {
			if err := s.run(ctx, 30*time.Second, func(cg *callgrind, t target) error {
				cg.keep = keep(s, w)
				r, err := countStream(ctx, d, t, w, cg)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.Name(), s.kind, err)
				}
				r.Server, r.Binary = s.kind, s.binary
				rep.Instr = append(rep.Instr, r)
				progress(instrLine(r))
				return nil
			}); err != nil {
				return err
			}
		}
		for _, w := range pings {
			if err := s.run(ctx, pingEvery, func(cg *callgrind, t target) error {
				cg.keep = keep(s, w)
				r, err := countPings(ctx, d, t, w, cg)
				if err != nil {
					return fmt.Errorf("%s on %s: %w", w.Name(), s.kind, err)
				}
				r.Server, r.Binary = s.kind, s.binary
				rep.Instr = append(rep.Instr, r)
				progress(instrLine(r))
				return nil
			}); err != nil {
				return err
			}
		}
	}
	rep.InstrComparisons = compareInstr(rep.Instr)
	return nil
}

// pingEvery is the ping interval of the instruction suite's heartbeat
// window: frequent enough to count many pings in seconds.
const pingEvery = time.Second

// instrServer starts one server kind under callgrind.
type instrServer struct {
	kind, binary string
	pings        bool // the server pings (a relay)
	// start starts the server with argv prefixed (valgrind) and the
	// heartbeat interval given.
	start func(prefix []string, env []string, ping time.Duration) (*proc, error)
}

// run starts the server under callgrind, calls f, and kills it (a Go
// program under callgrind does not survive a signal's delivery).
func (s instrServer) run(ctx context.Context, ping time.Duration, f func(cg *callgrind, t target) error) error {
	dir, err := os.MkdirTemp("", "relay-bench-cg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "cg.out")
	p, err := s.start(valgrindArgv(out), valgrindEnv, ping)
	if err != nil {
		return err
	}
	defer p.kill()
	return f(&callgrind{pid: p.pid, out: out}, target{kind: s.kind, base: "ws://" + p.addr, pid: p.pid})
}

// instrRuns numbers counted windows, so their server-ids never collide.
var instrRuns atomic.Int64

// countStream counts one streaming workload: a warm-up quota, then an
// exact quota between a zero and a dump.
func countStream(ctx context.Context, d *dialer, t target, w Workload, cg *callgrind) (InstrResult, error) {
	res := InstrResult{Workload: w}
	kind := t.kind
	if kind == kindRelayB {
		kind = kindRelay // the fleet speaks to it as to the relay
	}
	f, err := newFleet(ctx, d, target{kind: kind, base: t.base, pid: t.pid}, fmt.Sprintf("i%d", instrRuns.Add(1)), w.Binaries, w.PhonesPer)
	if err != nil {
		return res, err
	}
	defer f.close()
	f.setFrame(frameOf(w.Size))
	var quota, delivered atomic.Int64
	for _, p := range f.pairs {
		p.sem = make(chan struct{}, max(w.InFlight, 1))
	}
	h := streamHandlers(w.Kind, releaser(&delivered))
	switch w.Kind {
	case StreamP2B, StreamB2P:
	default:
		return res, fmt.Errorf("no instruction count for %q", w.Kind)
	}
	f.h.Store(h)
	stop := make(chan struct{})
	var senders sync.WaitGroup
	for _, p := range f.pairs {
		c, msg := p.phone, frameOf(w.Size)
		if w.Kind == StreamB2P {
			c, msg = p.bin, p.toPhone
		}
		senders.Add(1)
		go func() {
			defer senders.Done()
			for {
				select {
				case p.sem <- struct{}{}:
				case <-stop:
					return
				}
				for quota.Add(-1) < 0 { // no quota left: wait for the next phase
					quota.Add(1)
					select {
					case <-stop:
						<-p.sem
						return
					case <-time.After(time.Millisecond):
					}
				}
				if c.Write(ctx, websocket.MessageText, msg) != nil {
					return
				}
			}
		}()
	}
	defer func() { close(stop); f.close(); senders.Wait() }()
	await := func(n int64) error {
		deadline := time.Now().Add(10 * time.Minute)
		for delivered.Load() < n {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%d of %d messages delivered", delivered.Load(), n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		return nil
	}
	n := instrQuota(w.Size)
	warm := n / 5
	quota.Store(warm)
	if err := await(warm); err != nil {
		return res, err
	}
	if err := cg.zero(ctx); err != nil {
		return res, err
	}
	quota.Add(n)
	if err := await(warm + n); err != nil {
		return res, err
	}
	total, parts, err := cg.dump(ctx)
	if err != nil {
		return res, err
	}
	res.Units, res.Instructions, res.PerUnit = n, total, float64(total)/float64(n)
	res.Parts = perUnit(parts, n)
	return res, nil
}

// countPings holds w.Conns idle connections to a relay pinging every
// pingEvery and counts its instructions per ping answered over a window.
func countPings(ctx context.Context, d *dialer, t target, w Workload, cg *callgrind) (InstrResult, error) {
	res := InstrResult{Workload: w}
	var pinged atomic.Int64
	pd := d.withPingCounter(&pinged)
	groups := max(w.Conns/(w.PhonesPer+1), 1)
	var fleets []*fleet
	defer func() {
		for _, f := range fleets {
			f.close()
		}
	}()
	for g := range groups {
		f, err := newFleet(ctx, pd, target{kind: kindRelay, base: t.base, pid: t.pid}, fmt.Sprintf("p%d-%d", instrRuns.Add(1), g), 1, w.PhonesPer)
		if err != nil {
			return res, err
		}
		fleets = append(fleets, f)
	}
	// Two intervals for every connection's pings to reach their rhythm.
	sleepCtx(ctx, 2*pingEvery)
	if err := cg.zero(ctx); err != nil {
		return res, err
	}
	p0 := pinged.Load()
	sleepCtx(ctx, 15*time.Second)
	p1 := pinged.Load()
	total, parts, err := cg.dump(ctx)
	if err != nil {
		return res, err
	}
	if p1 == p0 {
		return res, errors.New("no ping answered in the window")
	}
	res.Units, res.Instructions, res.PerUnit = p1-p0, total, float64(total)/float64(p1-p0)
	res.Parts = perUnit(parts, p1-p0)
	return res, nil
}

func instrLine(r InstrResult) string {
	unit := "message"
	if r.Workload.Kind == Ping {
		unit = "ping"
	}
	return fmt.Sprintf("instructions  %-26s %-9s  %9.0f per %s  (%d %ss, %d instructions)", r.Workload.Name(), r.Server, r.PerUnit, unit, r.Units, unit, r.Instructions)
}

func compareInstr(rs []InstrResult) []InstrComparison {
	var out []InstrComparison
	idx := map[string]int{}
	for _, r := range rs {
		name := r.Workload.Name()
		i, ok := idx[name]
		if !ok {
			i = len(out)
			idx[name] = i
			out = append(out, InstrComparison{Workload: r.Workload})
		}
		switch r.Server {
		case kindRelay:
			out[i].Relay = r.PerUnit
		case kindForwarder:
			out[i].Forwarder = r.PerUnit
		case kindRelayB:
			out[i].RelayB = r.PerUnit
		}
	}
	for i := range out {
		out[i].Ratio = safeDiv(out[i].Forwarder, out[i].Relay)
		out[i].RatioB = safeDiv(out[i].Relay, out[i].RelayB)
	}
	return out
}
