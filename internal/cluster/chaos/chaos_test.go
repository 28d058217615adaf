package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// relayBinary builds cmd/relay once per test binary. The short run (make
// test) builds with -race, so the instances' own code runs under the race
// detector; `make chaos` (CHAOS_LONG=1) builds without it, since a
// race-built relay on a loaded 2-core machine is slow enough to turn
// timers into violations over minutes (CHAOS_RACE=1 forces it).
func relayBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("CHAOS_RELAY"); b != "" {
		return b
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relay-chaos-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "relay")
		args := []string{"build", "-o", builtBin}
		if os.Getenv("CHAOS_LONG") == "" || os.Getenv("CHAOS_RACE") == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/relay")...)
		cmd.Dir = "../../.."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// shortConfig is the run inside make test: a fixed seed, one round of
// every variant of the fault kinds enabled (about 50 s of faults), 8
// tenants.
func shortConfig() Config {
	return Config{Seed: 1, Duration: 30 * time.Second, Faults: shortFaults}
}

// TestChaos runs a seeded schedule against three real relays and a
// 3-node NATS cluster and fails on any violation, printing the seed and
// the command that replays it. make test runs the short form; make chaos
// the long one (CHAOS_LONG=1, CHAOS_DURATION, CHAOS_SEED: see the
// Makefile).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute: three relays and a NATS cluster under faults")
	}
	cfg := shortConfig()
	if os.Getenv("CHAOS_LONG") != "" {
		cfg = Config{Seed: time.Now().UnixNano() % 1_000_000, Duration: 5 * time.Minute, Faults: AllFaults}
	}
	cfg, err := cfg.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Relay = relayBinary(t)
	cfg.Logf = t.Logf
	canary := &reorderCanary{}
	cfg.Tamper = canary.tamper
	res, err := Run(context.Background(), cfg)
	if err != nil {
		if res != nil {
			t.Log("\n" + res.Report())
		}
		t.Fatalf("chaos harness: %v", err)
	}
	// The checker must have caught the one reordering injected into the
	// recording; it is not the cluster's.
	if !canary.remove(res) {
		t.Errorf("the checker missed the reordered delivery injected into the history (%s)", canary.what())
	}
	t.Log("\n" + res.Report())
	if out := os.Getenv("CHAOS_OUT"); out != "" && len(res.Violations) == 0 {
		if err := res.Save(out); err != nil {
			t.Logf("saving the run: %v", err)
		}
	}
	if len(res.Violations) > 0 {
		out := os.Getenv("CHAOS_OUT")
		if out == "" {
			out = filepath.Join(os.TempDir(), fmt.Sprintf("relay-chaos-%d-%s", res.Config.Seed, time.Now().Format("150405")))
		}
		if err := res.Save(out); err != nil {
			t.Logf("saving the run: %v", err)
		} else {
			t.Logf("the run (report, history, relay logs) is in %s; CHAOS_CHECK=%s go test -run TestChaosCheckSaved ./internal/cluster/chaos reruns the checker on it", out, out)
		}
		t.Errorf("chaos: %d violations (%s) with seed %d; replay: %s", len(res.Violations), Summary(res.Violations), res.Config.Seed, res.Config.Replay())
	}
}

// TestChaosCheckSaved reruns the checker on a saved run (CHAOS_CHECK=dir,
// what TestChaos wrote on failure); skipped without it.
func TestChaosCheckSaved(t *testing.T) {
	dir := os.Getenv("CHAOS_CHECK")
	if dir == "" {
		t.Skip("CHAOS_CHECK names a saved run")
	}
	vs, h, err := CheckSaved(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range strings.Split(os.Getenv("CHAOS_CONN"), ",") {
		if n, err := strconv.Atoi(id); err == nil {
			t.Logf("connection %d:\n%s", n, h.Timeline(n))
		}
	}
	for _, v := range vs {
		t.Logf("%s", v)
	}
	if len(vs) > 0 {
		t.Errorf("%d violations: %s", len(vs), Summary(vs))
	}
}

// reorderCanary is the test-only injection that proves the checker sees a
// reordered delivery end to end: it holds back the 5th frame of the first
// phone stream that gets that far and records it just after the 6th, as
// if the cluster had delivered them the wrong way round.
type reorderCanary struct {
	mu   sync.Mutex
	held *Delivery
	done bool
	key  streamKey
}

func (c *reorderCanary) tamper(d Delivery) []Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || !d.Up || d.Bad != "" || d.P.Forged {
		return []Delivery{d}
	}
	out := []Delivery{}
	if c.held != nil && d.P.Phone != c.held.P.Phone && d.Recv-c.held.Recv > 2*time.Second {
		out = append(out, *c.held) // its stream went quiet: no swap
		c.held = nil
	}
	switch {
	case c.held == nil && d.P.Seq == 5:
		c.held = &d
	case c.held != nil && d.P.Phone == c.held.P.Phone && d.P.Seq == 6:
		late := *c.held
		late.Recv = d.Recv + time.Microsecond
		out = append(out, d, late)
		c.done, c.held, c.key = true, nil, streamKey{Up: true, Phone: d.P.Phone}
	default:
		out = append(out, d)
	}
	return out
}

func (c *reorderCanary) what() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.done {
		return "no stream reached frame 6: nothing injected"
	}
	return c.key.String() + ": frame 5 recorded after frame 6"
}

// remove takes the injected reordering out of res.Violations and reports
// whether the checker had found it.
func (c *reorderCanary) remove(res *Result) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.done {
		return false
	}
	want := c.key.String() + ": frame 5 delivered after frame 6"
	for i, v := range res.Violations {
		if v.Kind == VReordered && strings.Contains(v.What, want) {
			res.Violations = append(res.Violations[:i:i], res.Violations[i+1:]...)
			return true
		}
	}
	return false
}
