package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Result is a run: what it did, what it recorded, what the checker found.
type Result struct {
	Config     Config
	Plan       []Step
	History    *History
	Violations []Violation
	// Waived are violations a known defect's waiver excused.
	Waived []Violation
	Stats  Stats
	Took   time.Duration
	// Logs holds the tail of every relay's log when something was found.
	Logs string
}

// VCrash: a relay panicked or the race detector reported a data race.
const VCrash VKind = "crash"

// Run starts the fleet, runs the traffic and the schedule, quiesces,
// reads the gauges and checks the history. An error is a harness failure
// (the fleet did not start); what the cluster did wrong is in
// Result.Violations.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.Defaults()
	if cfg.Relay == "" {
		return nil, fmt.Errorf("chaos: no relay binary")
	}
	res := &Result{Config: cfg, Plan: Plan(cfg)}
	dir, err := os.MkdirTemp("", "relay-chaos-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	h := NewHistory(3)
	res.History = h
	f, err := startFleet(ctx, cfg, h, dir, start)
	defer f.close()
	if err != nil {
		return res, err
	}
	cfg.Logf("fleet up after %v: 3 NATS nodes, 3 relays (%s)", time.Since(start).Round(time.Millisecond), cfg.Relay)
	sctx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	sampled, probed := make(chan struct{}), make(chan struct{})
	go f.sampleOnline(sctx, sampled)
	go f.probeLive(sctx, probed)

	d := newDriver(f, h, cfg)
	if slices.Contains(cfg.Faults, FaultRogue) {
		if d.nc, err = nats.Connect(f.urls[0], nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond)); err != nil {
			return res, err
		}
		defer d.nc.Close()
	}
	d.start()
	time.Sleep(1500 * time.Millisecond) // traffic before the first fault
	r := rand.New(rand.NewPCG(uint64(cfg.Seed), 2))
	for i, s := range res.Plan {
		if ctx.Err() != nil {
			break
		}
		cfg.Logf("t=%6.1fs fault %d/%d: %s", f.now().Seconds(), i+1, len(res.Plan), s)
		d.inject(ctx, s, r)
		time.Sleep(s.Gap)
	}
	// Every fault is undone by now (inject restores what it broke). Let
	// the cluster recover, then stop the traffic and let what is in flight
	// arrive.
	if !f.allConnected(ctx, 30*time.Second) {
		cfg.Logf("not every relay reconnected to NATS within 30s")
	}
	time.Sleep(2 * time.Second)
	d.quiesce()
	h.update(func() { h.Quiesce = f.now() })
	time.Sleep(2500 * time.Millisecond) // what is in flight arrives
	d.closeAll(Phone, 5*time.Second)
	time.Sleep(1500 * time.Millisecond) // their close notices reach the binaries
	d.closeAll(Binary, 5*time.Second)
	waitGroup(&d.wg, 10*time.Second)
	h.update(func() { h.End = f.now() })
	// Grace slots end after --grace-period: the gauges then must read 0.
	time.Sleep(cfg.Grace + cfg.Slack)
	f.settleGauges(ctx, cfg.Lease+10*time.Second)
	stopSampling()
	<-sampled
	<-probed
	f.accepted()
	res.Violations, res.Waived = waive(append(Check(h, cfg.Params()), f.crashes()...), cfg.Waivers)
	res.Stats = h.Stats()
	res.Took = time.Since(start)
	if len(res.Violations)+len(res.Waived) > 0 {
		res.Logs = f.logs(1 << 30)
	}
	return res, nil
}

func waitGroup(wg interface{ Wait() }, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// crashes are panics and data races in any relay's log.
func (f *fleet) crashes() []Violation {
	var out []Violation
	for _, r := range f.rs {
		r.mu.Lock()
		procs := r.procs
		r.mu.Unlock()
		for g, p := range procs {
			text := p.LogText()
			for _, marker := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
				if i := strings.Index(text, marker); i >= 0 {
					out = append(out, Violation{Kind: VCrash, What: fmt.Sprintf("relay %s (start %d): %s", r.id, g+1, marker),
						Detail: tail(text[i:], 4000)})
				}
			}
		}
	}
	return out
}

// Report is the run's summary: what ran, the replay command, the counts,
// the faults, and every violation (the first ones with their detail).
func (res *Result) Report() string {
	var b strings.Builder
	c := res.Config
	s := res.Stats
	fmt.Fprintf(&b, "chaos: seed %d, %v of faults planned (%d steps), run took %v\n", c.Seed, c.Duration, len(res.Plan), res.Took.Round(time.Second))
	fmt.Fprintf(&b, "replay: %s\n", c.Replay())
	fmt.Fprintf(&b, "traffic: %d tenants, %d binaries (%d squatting), %d phones, %d frames sent, %d delivered, %d close notices\n",
		c.Tenants, s.Binaries, s.Squatters, s.Phones, s.FramesSent, s.FramesDelivered, s.Notices)
	kinds := make([]string, 0, len(s.Faults))
	for k, n := range s.Faults {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	fmt.Fprintf(&b, "faults: %s\n", strings.Join(kinds, ", "))
	if res.History != nil {
		for _, f := range res.History.Faults {
			fmt.Fprintf(&b, "  %s", f)
			if f.Kind == FaultStall && res.History.Conns[f.Target] != nil && f.End != 0 {
				bl := stallBacklog(res.History, f)
				p := c.Params()
				fmt.Fprintf(&b, " (backlog after it: %d bytes of %d phones; ceiling %d + %d)", bl.bytes, bl.phones, p.MaxQueued, p.KernelSlack)
			}
			b.WriteString("\n")
		}
	}
	if h := res.History; h != nil {
		var starved []string
		for i, ivs := range h.Starved {
			var total time.Duration
			for _, iv := range ivs {
				total += iv.To - iv.From
			}
			if total > 0 {
				starved = append(starved, fmt.Sprintf("%s %v in %d", instanceID(i), total.Round(100*time.Millisecond), len(ivs)))
			}
		}
		var paused time.Duration
		for _, iv := range h.Paused {
			paused += iv.To - iv.From
		}
		if len(starved) > 0 || paused > 0 {
			fmt.Fprintf(&b, "machine: relays unresponsive (no fault) %s; harness paused %v (treated as SIGSTOPs)\n", strings.Join(starved, ", "), paused.Round(100*time.Millisecond))
		}
	}
	fmt.Fprintf(&b, "violations: %s\n", Summary(res.Violations))
	if len(res.Waived) > 0 {
		fmt.Fprintf(&b, "waived (known defects): %s\n", Summary(res.Waived))
		for i, v := range res.Waived {
			if i == 10 {
				fmt.Fprintf(&b, "  ... %d more\n", len(res.Waived)-i)
				break
			}
			fmt.Fprintf(&b, "  %s\n", v)
		}
	}
	for i, v := range res.Violations {
		if i == 40 {
			fmt.Fprintf(&b, "  ... %d more\n", len(res.Violations)-i)
			break
		}
		fmt.Fprintf(&b, "  %s\n", v)
		if v.Detail != "" && i < 5 {
			fmt.Fprintf(&b, "%s\n", indent(v.Detail, "      "))
		}
	}
	return b.String()
}

func indent(s, pre string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = pre + l
	}
	return strings.Join(lines, "\n")
}

// Save writes the run into dir: report.txt (every violation, with its
// detail), history.json and params.json (for CheckSaved), and the relays'
// log tails.
func (res *Result) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString(res.Report())
	b.WriteString("\nall violations (then the waived ones):\n")
	for _, v := range append(append([]Violation(nil), res.Violations...), res.Waived...) {
		fmt.Fprintf(&b, "%s\n", v)
		if v.Detail != "" {
			fmt.Fprintf(&b, "%s\n", indent(v.Detail, "    "))
		}
	}
	hj, err := json.Marshal(res.History)
	if err != nil {
		return err
	}
	pj, err := json.MarshalIndent(res.Config.Params(), "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{"report.txt": []byte(b.String()), "history.json": hj, "params.json": pj, "relay-logs.txt": []byte(res.Logs)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// CheckSaved reruns the checker on a run Save wrote.
func CheckSaved(dir string) ([]Violation, *History, error) {
	var h History
	var p Params
	for name, v := range map[string]any{"history.json": &h, "params.json": &p} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return Check(&h, p), &h, nil
}
