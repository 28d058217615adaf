package loadbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the forwarder process, as the command does.
func TestMain(m *testing.M) {
	if addr := os.Getenv(ForwarderEnv); addr != "" {
		if err := ServeForwarder(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}

// A smoke run of the harness end to end: the real relay binary and the
// forwarder as processes, every workload kind, figures read from /proc,
// ratios paired per cycle, the table, JSON and plots. Short windows: this
// checks the harness works, not how fast anything is.
func TestHarness_SmokeRun_ReportsEveryFigureAgainstTheForwarder(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "relay")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := buildRelay(ctx, root, bin); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(ctx, Config{
		RelayBin: bin, ForwarderArgv: []string{os.Args[0]}, Suite: "smoke", Cycles: 1,
		Warmup: 100 * time.Millisecond, Run: 300 * time.Millisecond, Idle: 600 * time.Millisecond,
		Settle: 200 * time.Millisecond, PingInterval: 200 * time.Millisecond, Pin: true, GOMAXPROCS: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]bool{}
	for _, r := range rep.Results {
		if kinds[r.Workload.Kind] == nil {
			kinds[r.Workload.Kind] = map[string]bool{}
		}
		kinds[r.Workload.Kind][r.Server] = true
		if r.Workload.Kind == Idle {
			if r.RSSPerConnKiB <= 0 || r.SetupPerSec <= 0 || len(r.RSSSeriesMiB) == 0 {
				t.Errorf("idle %s: %+v", r.Server, r)
			}
			continue
		}
		if r.Messages <= 0 || r.MsgPerSec <= 0 || r.CPUPerMsgUS <= 0 || len(r.MachineBusy) == 0 {
			t.Errorf("%s %s: missing figures: %+v", r.Workload.Name(), r.Server, r)
		}
		if r.Workload.Kind == PingPong && !(r.RTTP50MS > 0 && r.RTTP50MS <= r.RTTP95MS && r.RTTP95MS <= r.RTTP99MS) {
			t.Errorf("%s %s: round trips %v/%v/%v", r.Workload.Name(), r.Server, r.RTTP50MS, r.RTTP95MS, r.RTTP99MS)
		}
	}
	for _, k := range []string{StreamP2B, StreamB2P, PingPong, Idle} {
		if !kinds[k][kindRelay] || !kinds[k][kindForwarder] {
			t.Errorf("workload %s ran on %v; want relay and forwarder", k, kinds[k])
		}
	}
	if len(rep.Comparisons) != 4 {
		t.Fatalf("%d comparisons, want 4", len(rep.Comparisons))
	}
	for _, c := range rep.Comparisons {
		if c.Workload.Kind == Idle {
			if c.RSSRatio.N != 1 {
				t.Errorf("idle: no RSS ratio: %+v", c.RSSRatio)
			}
			continue
		}
		if c.CPURatio.N != 1 || c.ThroughputRatio.N != 1 {
			t.Errorf("%s: ratios %+v %+v", c.Workload.Name(), c.CPURatio, c.ThroughputRatio)
		}
		if want := c.Forwarder.CPUPerMsgUS / c.Relay.CPUPerMsgUS; c.CPURatio.Median != want {
			t.Errorf("%s: CPU ratio %v, want forwarder/relay = %v", c.Workload.Name(), c.CPURatio.Median, want)
		}
	}

	var table bytes.Buffer
	if err := RenderTable(&table, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stream_p2b 512B 2p", "stream_b2p 512B 2p", "pingpong 512B 2p", "20 conns", "CPU ratio"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Results) != len(rep.Results) {
		t.Fatalf("JSON round trip: %v, %d results", err, len(back.Results))
	}
	assertNoChildren(t)
}

// assertNoChildren fails if a server process the run started is still alive.
func assertNoChildren(t *testing.T) {
	t.Helper()
	out, _ := exec.Command("ps", "-o", "pid=", "--ppid", fmt.Sprint(os.Getpid())).Output()
	for _, f := range strings.Fields(string(out)) {
		if st, err := os.ReadFile("/proc/" + f + "/stat"); err == nil && !bytes.Contains(st, []byte(") Z ")) && !bytes.Contains(st, []byte("(ps)")) {
			t.Errorf("child process %s still running: %s", f, st)
		}
	}
}

// The plots are drawn by gonum/plot from a report's sweeps.
func TestWritePlots_DrawsEverySweep(t *testing.T) {
	rep := &Report{}
	for i, size := range []int{128, 512, 16 << 10} {
		for _, kind := range []string{StreamP2B, StreamB2P} {
			w := Workload{Kind: kind, Size: size, Binaries: 1, PhonesPer: 16}
			rep.Comparisons = append(rep.Comparisons, Comparison{Workload: w,
				Relay:     Result{Workload: w, CPUPerMsgUS: float64(10 + i)},
				Forwarder: Result{Workload: w, CPUPerMsgUS: float64(5 + i)},
				CPURatio:  Ratio{Median: 0.5, N: 1}})
		}
	}
	for _, n := range []int{1000, 5000} {
		w := Workload{Kind: Idle, Conns: n}
		rep.Comparisons = append(rep.Comparisons, Comparison{Workload: w,
			Relay:     Result{Workload: w, RSSPerConnKiB: 30, IdleCPUPercent: 0.1, SetupPerSec: 500},
			Forwarder: Result{Workload: w, RSSPerConnKiB: 20, SetupPerSec: 600}})
	}
	files, err := WritePlots(rep, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 5 {
		t.Fatalf("wrote %v, want 5 plots", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) || len(b) < 5000 {
			t.Errorf("%s is not a drawn PNG (%d bytes, %v)", f, len(b), err)
		}
	}
}

// A callgrind dump's total is read from its summary line, and the suite's
// comparison pairs the servers' counts per workload.
func TestInstr_DumpTotalAndComparison(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cg.out.1")
	if err := os.WriteFile(path, []byte("# callgrind format\nversion: 1\nevents: Ir\nfl=x\nfn=y\n0 5\nsummary: 123456\ntotals: 123456\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := dumpTotal(path); err != nil || n != 123456 {
		t.Fatalf("dumpTotal = %d, %v; want 123456", n, err)
	}
	w := Workload{Kind: StreamB2P, Size: 512, Binaries: 1, PhonesPer: 16, InFlight: 8}
	cs := compareInstr([]InstrResult{
		{Workload: w, Server: kindForwarder, PerUnit: 9000},
		{Workload: w, Server: kindRelay, PerUnit: 12000},
		{Workload: w, Server: kindRelayB, PerUnit: 10000},
	})
	if len(cs) != 1 || cs[0].Ratio != 0.75 || cs[0].RatioB != 1.2 {
		t.Fatalf("comparison %+v", cs)
	}
}

// A report is busy when other processes took more than BusyThreshold of
// the CPUs during any window, and says so in its Markdown.
func TestReport_BusyWhenOthersTookTheCPUs(t *testing.T) {
	rep := &Report{Results: []Result{{OthersShare: 0.02}, {OthersShare: 0.25}}}
	rep.settleBusy()
	if !rep.Busy || rep.OthersMax != 0.25 {
		t.Fatalf("busy %v, others %v", rep.Busy, rep.OthersMax)
	}
	var b strings.Builder
	_ = RenderMarkdown(&b, rep)
	if !strings.Contains(b.String(), "busy machine") {
		t.Fatalf("markdown of a busy run does not say so:\n%s", b.String())
	}
	rep = &Report{Results: []Result{{OthersShare: 0.05}}}
	rep.settleBusy()
	if rep.Busy {
		t.Fatal("5% of the CPUs taken by others counted as busy")
	}
}

// A dump's self costs add up by part; a call's inclusive cost (after
// calls=) is the callee's, not counted again.
func TestDumpParts_SelfCostsByPart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cg.out.1")
	dump := `events: Ir
summary: 1111
fl=(1) a.go
fn=(1) github.com/pyrycode/relay/internal/relay.skipString
10 100
cfl=(1)
cfn=(2) github.com/coder/websocket.(*Conn).Write
calls=3 0
12 1000
fn=(2)
+2 1000
fn=(3) runtime.memmove
5 10
fn=(4) github.com/pyrycode/relay/internal/relay.(*outbox).push
5 1
`
	if err := os.WriteFile(path, []byte(dump), 0o644); err != nil {
		t.Fatal(err)
	}
	parts, err := dumpParts(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"scan": 100, "websocket library": 1000, "copies": 10, "own code": 1}
	for k, v := range want {
		if parts[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, parts[k], v, parts)
		}
	}
}
