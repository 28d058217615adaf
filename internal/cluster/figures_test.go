package cluster_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// figuresBusyOK prints the figures of a run on a busy machine instead of
// failing it. They are then marked busy: not figures for docs/.
var figuresBusyOK = flag.Bool("figures-busy-ok", false, "TestClusterFigures: print the figures of a busy run (marked busy) instead of failing")

// figuresEchoEnv makes the test binary the floor's echo process
// (TestClusterFiguresEcho): it answers every message on figFloorReq with
// the same bytes on figFloorResp, through the NATS server at that URL.
const figuresEchoEnv = "CLUSTER_FIGURES_ECHO_URL"

const (
	figFloorReq  = "figures.floor.req"
	figFloorResp = "figures.floor.resp"
	figFloorSink = "figures.floor.sink"
	figFloorAck  = "figures.floor.ack"
)

// Quiet-machine rule: while the figures were measured, processes other
// than the ones this test started used at most this share of the
// machine's CPU time. /proc/loadavg is recorded too, but it counts this run's own
// processes and lags by a minute, so it is not the rule.
const figuresMaxForeign = 0.10

// The figures' sizes. A phase's throughput is the median of its repeats,
// each a fresh burst of figFrames frames, same- and cross-instance
// alternating so that drift hits both alike.
const (
	figRounds  = 2000
	figFrames  = 50000
	figRepeats = 3
	// figWindow bounds the frames in flight in a throughput phase (sent,
	// not yet received), so no queue nears its cap: the figure is the
	// relays' pace, not a shed phone's.
	figWindow = 1000
)

// TestClusterFigures measures cluster mode against its own baselines in
// one run (`make cluster-figures`; docs/cluster.md, Figures):
//
//   - round trip phone -> relay -> binary -> relay -> phone with the phone
//     on the binary's instance (same-instance) and on the other one
//     (cross-instance, through NATS), and the floor: a bare nats.go round
//     trip through the same NATS server (this process -> NATS -> an echo
//     process -> NATS -> this process), the two NATS crossings a
//     cross-instance round trip adds; interleaved round by round;
//   - one phone's throughput to its binary (up) and the binary's to it
//     (down), same- and cross-instance, and bare NATS's one-way throughput;
//   - where a round trip's extra time goes: one-way legs through relay A
//     alone, through relay B and NATS, through NATS and relay A, and
//     through NATS alone (figLegs);
//   - where the CPU goes: CPU time per frame of each process (both relays,
//     the NATS server, the clients) and each relay's heap allocations per
//     frame.
//
// Everything runs on 127.0.0.1: a real NATS server (nats-server built from
// the module's own version) and two relays (normal builds) as processes.
// The machine's load is recorded, and a run during which other processes
// used more than figuresMaxForeign of the CPU fails (refuses to be
// published) unless -figures-busy-ok. Not part of `make test`.
func TestClusterFigures(t *testing.T) {
	if os.Getenv("RELAY_CLUSTER_FIGURES") == "" {
		t.Skip("set RELAY_CLUSTER_FIGURES=1 (make cluster-figures)")
	}
	rep := figReport{started: time.Now(), cpus: len(machineJiffies()) - 1, loadStart: loadAvg()}
	dir := t.TempDir()
	relayBin, natsBin := filepath.Join(dir, "relay"), filepath.Join(dir, "nats-server")
	for _, b := range [][]string{{relayBin, "./cmd/relay"}, {natsBin, "github.com/nats-io/nats-server/v2"}} {
		cmd := exec.Command("go", "build", "-o", b[0], b[1])
		cmd.Dir = "../.."
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	port, err := natstest.FreePort()
	require.NoError(t, err)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	ns := exec.Command(natsBin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", t.TempDir())
	require.NoError(t, ns.Start())
	t.Cleanup(func() { _ = ns.Process.Kill(); _ = ns.Wait() })
	nc := figNATS(t, natsURL)
	defer nc.Close()

	procs := map[string]int{"NATS server": ns.Process.Pid}
	var ins []*instance
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, err := attacks.StartProcess(ctx, relayBin, "serve", "--insecure-listen", "127.0.0.1:0", "--cluster-nats", natsURL,
			"--instance-id", fmt.Sprintf("f%d", i), "--log-level", "info", "--upgrade-burst", "100", "--metrics-listen", "127.0.0.1:0")
		cancel()
		require.NoError(t, err)
		defer p.Stop()
		procs[fmt.Sprintf("relay %c", 'A'+i)] = p.Pid()
		ins = append(ins, &instance{id: fmt.Sprintf("f%d", i), proc: p, ws: "ws://" + p.Addr})
	}
	echo := exec.Command(os.Args[0], "-test.run=^TestClusterFiguresEcho$")
	echo.Env = append(os.Environ(), figuresEchoEnv+"="+natsURL)
	require.NoError(t, echo.Start())
	t.Cleanup(func() { _ = echo.Process.Kill(); _ = echo.Wait() })
	procs["NATS echo"] = echo.Process.Pid
	m := &figMeter{procs: procs, relays: ins}

	sid := newID("fig")
	b := binaryAt(t, ins[0], sid)
	phones := map[string]*conn{"same": phoneAt(t, ins[0], sid), "cross": phoneAt(t, ins[1], sid)}
	ids := map[string]string{"same": hello(t, b, phones["same"]), "cross": hello(t, b, phones["cross"])}

	// Round trips: the binary echoes every frame to the phone that sent
	// it; each round is one same-instance, one cross-instance and one
	// floor round trip.
	floor := figFloorRTT(t, nc)
	echoing := make(chan struct{})
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		for {
			select {
			case <-echoing:
				return
			default:
			}
			msg, err := b.next(100 * time.Millisecond)
			if err != nil {
				continue
			}
			var e envelope
			if json.Unmarshal(msg, &e) == nil && e.Frame != nil {
				_ = b.trySend(map[string]any{"conn_id": e.ConnID, "frame": e.Frame})
			}
		}
	}()
	rtt := map[string][]time.Duration{}
	ph := m.start()
	for i := 0; i < figRounds+200; i++ { // the first 200 warm up
		for _, kind := range []string{"same", "cross", "floor"} {
			start := time.Now()
			if kind == "floor" {
				floor()
			} else {
				require.NoError(t, phones[kind].trySend(map[string]any{"i": i}))
				_, err := phones[kind].next(5 * time.Second)
				require.NoError(t, err)
			}
			if i >= 200 {
				rtt[kind] = append(rtt[kind], time.Since(start))
			}
		}
	}
	rep.phases = append(rep.phases, m.stop(ph, "round trips", figRounds*3))
	rep.rtt = map[string][2]time.Duration{}
	close(echoing)
	<-echoDone
	for k, d := range rtt {
		slices.Sort(d)
		rep.rtt[k] = [2]time.Duration{pct(d, .5), pct(d, .99)}
	}

	// Throughput: pre-encoded frames, so the clients cost little and the
	// same for both placements.
	upFrame := []byte(`{"i":0,"pad":"` + strings.Repeat("x", 200) + `"}`)
	for r := 0; r < figRepeats; r++ {
		for _, dir := range []string{"up", "down"} {
			for _, kind := range []string{"same", "cross"} {
				tx, rx, frame := phones[kind].ws, b, upFrame
				if dir == "down" {
					tx, rx = b.ws, phones[kind]
					frame = []byte(`{"conn_id":"` + ids[kind] + `","frame":` + string(upFrame) + `}`)
				}
				ph := m.start()
				rate := figPump(t, tx, rx, frame)
				rep.add(dir+" "+kind, m.stop(ph, dir+" "+kind, figFrames), rate)
			}
		}
		ph := m.start()
		rate := figFloorPump(t, nc, upFrame)
		rep.add("NATS alone", m.stop(ph, "NATS alone", figFrames), rate)
	}
	// One-way legs, to see where a cross-instance round trip's extra time
	// goes: a fresh cross-instance phone, since the last legs publish as
	// its home would and leave its sequence numbers behind.
	ph = m.start()
	rep.legs = figLegs(t, nc, b, phones["same"], phoneAt(t, ins[1], sid), sid)
	rep.phases = append(rep.phases, m.stop(ph, "legs", 4*figRounds))
	rep.loadEnd = loadAvg()
	rep.print(os.Stdout)
	if busy := rep.foreign(); busy > figuresMaxForeign {
		msg := fmt.Sprintf("machine busy: other processes used %.0f%% of the CPU while it measured (limit %.0f%%): these figures are not for docs/", busy*100, figuresMaxForeign*100)
		if !*figuresBusyOK {
			t.Fatal(msg)
		}
		t.Log(msg)
	}
}

// TestClusterFiguresEcho is the floor's echo process: TestClusterFigures
// runs this test binary again with figuresEchoEnv set.
func TestClusterFiguresEcho(t *testing.T) {
	url := os.Getenv(figuresEchoEnv)
	if url == "" {
		t.Skip("run by TestClusterFigures")
	}
	nc := figNATS(t, url)
	_, err := nc.Subscribe(figFloorReq, func(m *nats.Msg) { _ = nc.Publish(figFloorResp, m.Data) })
	require.NoError(t, err)
	n := 0
	_, err = nc.Subscribe(figFloorSink, func(m *nats.Msg) {
		if n++; n%figWindow == 0 {
			_ = nc.Publish(figFloorAck, nil)
		}
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	select {}
}

// figNATS connects to the NATS server at url, waiting for it to listen.
func figNATS(t *testing.T, url string) *nats.Conn {
	t.Helper()
	var nc *nats.Conn
	var err error
	pollUntil(30*time.Second, func() bool {
		nc, err = nats.Connect(url)
		return err == nil
	})
	require.NoError(t, err)
	return nc
}

// figFloorRTT waits for the echo process and returns one floor round trip.
func figFloorRTT(t *testing.T, nc *nats.Conn) func() {
	t.Helper()
	resp := make(chan struct{}, 1)
	_, err := nc.Subscribe(figFloorResp, func(*nats.Msg) { resp <- struct{}{} })
	require.NoError(t, err)
	payload := []byte(`{"i":0}`)
	require.True(t, pollUntil(30*time.Second, func() bool { // the echo is subscribed
		_ = nc.Publish(figFloorReq, payload)
		select {
		case <-resp:
			return true
		case <-time.After(100 * time.Millisecond):
			return false
		}
	}), "the floor's echo process did not answer")
	time.Sleep(200 * time.Millisecond)
	select { // a late answer to a retry
	case <-resp:
	default:
	}
	return func() {
		require.NoError(t, nc.Publish(figFloorReq, payload))
		select {
		case <-resp:
		case <-time.After(5 * time.Second):
			t.Fatal("floor round trip: no answer in 5 s")
		}
	}
}

// figPump sends figFrames copies of frame on tx as fast as rx takes them,
// at most figWindow ahead, and returns frames per second.
func figPump(t *testing.T, tx *websocket.Conn, rx *conn, frame []byte) float64 {
	t.Helper()
	window := make(chan struct{}, figWindow)
	failed := make(chan error, 1)
	start := time.Now()
	go func() {
		for i := 0; i < figFrames; i++ {
			window <- struct{}{}
			if err := tx.Write(context.Background(), websocket.MessageText, frame); err != nil {
				failed <- err
				return
			}
		}
	}()
	for got := 0; got < figFrames; got++ {
		select {
		case err := <-failed:
			t.Fatalf("send failed after %d frames: %v", got, err)
		default:
		}
		_, err := rx.next(10 * time.Second)
		require.NoError(t, err, "after %d frames", got)
		<-window
	}
	return figFrames / time.Since(start).Seconds()
}

// figFloorPump publishes figFrames copies of frame to the echo process,
// which acknowledges every figWindow, at most two windows ahead, and
// returns messages per second.
func figFloorPump(t *testing.T, nc *nats.Conn, frame []byte) float64 {
	t.Helper()
	acks := make(chan struct{}, figFrames/figWindow)
	sub, err := nc.Subscribe(figFloorAck, func(*nats.Msg) { acks <- struct{}{} })
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, nc.Flush())
	ack := func() {
		select {
		case <-acks:
		case <-time.After(10 * time.Second):
			t.Fatal("NATS alone: the echo process stopped acknowledging")
		}
	}
	start := time.Now()
	waited := 0
	for i := 0; i < figFrames; i++ {
		if i >= 2*figWindow && i%figWindow == 0 {
			ack()
			waited++
		}
		require.NoError(t, nc.Publish(figFloorSink, frame))
	}
	for ; waited < figFrames/figWindow; waited++ {
		ack()
	}
	return figFrames / time.Since(start).Seconds()
}

// figLegs measures one-way legs (p50), each figRounds times: "same" a
// phone's frame to its binary on the same instance; "home" a cross-instance
// phone's frame to the NATS server and on to a subscriber here (the phone's
// relay, B, and one NATS crossing); "owner" a link message published here
// as B would, through NATS to A and on to the binary (one NATS crossing and
// A); "NATS" a message published here to a subscriber here (one NATS
// crossing, the part home and owner share). The first three interleave;
// the owner's come last, as they take the phone's sequence numbers.
func figLegs(t *testing.T, nc *nats.Conn, b, same, cross *conn, sid string) map[string]time.Duration {
	t.Helper()
	connID := hello(t, b, cross)
	seq := uint64(1)
	got := make(chan struct{}, 16)
	link := "relay.i.f0.m.f1" // A's link inbox, from B (subjects.go)
	for _, subj := range []string{link, "figures.legs.nats"} {
		sub, err := nc.Subscribe(subj, func(*nats.Msg) { got <- struct{}{} })
		require.NoError(t, err)
		defer func() { _ = sub.Unsubscribe() }()
	}
	require.NoError(t, nc.Flush())
	wait := func() {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("legs: a message did not come")
		}
	}
	toBinary := func() {
		_, err := b.next(5 * time.Second)
		require.NoError(t, err)
	}
	frame := []byte(`{"i":0}`)
	ctx := context.Background()
	d := map[string][]time.Duration{}
	timed := func(leg string, f func()) {
		start := time.Now()
		f()
		d[leg] = append(d[leg], time.Since(start))
	}
	for i := 0; i < figRounds; i++ {
		timed("same", func() { require.NoError(t, same.ws.Write(ctx, websocket.MessageText, frame)); toBinary() })
		timed("home", func() { require.NoError(t, cross.ws.Write(ctx, websocket.MessageText, frame)); wait() })
		seq++
		toBinary() // A forwarded it too
		timed("NATS", func() { require.NoError(t, nc.Publish("figures.legs.nats", frame)); wait() })
	}
	for i := 0; i < figRounds; i++ {
		seq++
		// The link layout of internal/cluster/wire.go, version 1: up, no
		// flags, seq, code 0, server-id, conn_id, no token, frame.
		msg := binary.AppendUvarint([]byte{1, 1, 0}, seq)
		msg = binary.AppendUvarint(msg, 0)
		for _, s := range []string{sid, connID, ""} {
			msg = append(binary.AppendUvarint(msg, uint64(len(s))), s...)
		}
		msg = append(msg, frame...)
		timed("owner", func() { require.NoError(t, nc.Publish(link, msg)); toBinary() })
		wait() // the subscription here saw it too
	}
	out := map[string]time.Duration{}
	for leg, ds := range d {
		slices.Sort(ds)
		out[leg] = pct(ds, .5)
	}
	return out
}

// figMeter measures a phase: CPU time of every process and of the whole
// machine, and the relays' heap allocations.
type figMeter struct {
	procs  map[string]int
	relays []*instance
}

type figSnap struct {
	at      time.Time
	cpu     map[string]time.Duration
	machine []uint64 // busy jiffies: all CPUs, then each
	allocs  []float64
}

type figPhase struct {
	name string
	n    int
	// cpu is CPU time per frame (or round) of each process; "clients" is
	// this test process (the WebSocket clients and the floor's).
	cpu    map[string]time.Duration
	allocs []float64 // per relay, per frame
	rate   float64
	// wall is the phase's duration times the CPUs, machine the CPU time
	// the whole machine spent, ours the part this test's processes did.
	wall, machine, ours time.Duration
}

func (m *figMeter) snap() figSnap {
	s := figSnap{at: time.Now(), cpu: map[string]time.Duration{}}
	for name, pid := range m.procs {
		s.cpu[name] = procCPU(pid)
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s.cpu["clients"] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	s.machine = machineJiffies()
	for _, r := range m.relays {
		v, _ := r.proc.Metric(context.Background(), "go_memstats_mallocs_total")
		s.allocs = append(s.allocs, v)
	}
	return s
}

func (m *figMeter) start() figSnap { return m.snap() }

func (m *figMeter) stop(a figSnap, name string, n int) figPhase {
	b := m.snap()
	p := figPhase{name: name, n: n, cpu: map[string]time.Duration{}, wall: b.at.Sub(a.at) * time.Duration(len(b.machine)-1)}
	var ours time.Duration
	for k, v := range b.cpu {
		d := v - a.cpu[k]
		ours += d
		p.cpu[k] = d / time.Duration(n)
	}
	for i := range b.allocs {
		p.allocs = append(p.allocs, (b.allocs[i]-a.allocs[i])/float64(n))
	}
	p.machine = time.Duration(b.machine[0]-a.machine[0]) * time.Second / clockTicks
	p.ours = ours
	return p
}

// clockTicks is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTicks = 100

// procCPU is the CPU time of a process's threads so far: the sum of their
// /proc/PID/task/TID/schedstat run times (nanoseconds, unlike /proc's
// 10 ms ticks).
func procCPU(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if v, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64); err == nil {
			sum += time.Duration(v)
		}
	}
	return sum
}

// machineJiffies is the busy time of all CPUs, then of each (/proc/stat).
func machineJiffies() []uint64 {
	b, _ := os.ReadFile("/proc/stat")
	var out []uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		var busy uint64
		for i, v := range f[1:8] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			busy += n
		}
		out = append(out, busy)
	}
	return out
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func pct(sorted []time.Duration, q float64) time.Duration {
	return sorted[int(q*float64(len(sorted)-1))]
}

// figReport is the run's figures.
type figReport struct {
	started            time.Time
	cpus               int
	loadStart, loadEnd string
	rtt                map[string][2]time.Duration // p50, p99
	legs               map[string]time.Duration    // p50
	phases             []figPhase
	order              []string
	repeats            map[string][]figPhase
}

func (r *figReport) add(name string, p figPhase, rate float64) {
	p.rate = rate
	if r.repeats == nil {
		r.repeats = map[string][]figPhase{}
	}
	if _, ok := r.repeats[name]; !ok {
		r.order = append(r.order, name)
	}
	r.repeats[name] = append(r.repeats[name], p)
	r.phases = append(r.phases, p)
}

// median is the repeat with the median rate.
func (r *figReport) median(name string) figPhase {
	ps := slices.Clone(r.repeats[name])
	slices.SortFunc(ps, func(a, b figPhase) int {
		switch {
		case a.rate < b.rate:
			return -1
		case a.rate > b.rate:
			return 1
		}
		return 0
	})
	return ps[len(ps)/2]
}

// foreign is the share of the machine's CPU that other processes used
// during the measured phases.
func (r *figReport) foreign() float64 {
	var wall, machine, ours time.Duration
	for _, p := range r.phases {
		wall += p.wall
		machine += p.machine
		ours += p.ours
	}
	if wall <= 0 {
		return 0
	}
	return max(0, float64(machine-ours)/float64(wall))
}

func (r *figReport) print(w *os.File) {
	us := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d.Nanoseconds())/1e3, 'f', 0, 64) + " µs"
	}
	busy := r.foreign()
	verdict := "quiet"
	if busy > figuresMaxForeign {
		verdict = "BUSY (not for docs/)"
	}
	fmt.Fprintf(w, "\nCluster figures, %s: %d CPUs, loadavg %s at the start and %s at the end; other processes used %.0f%% of the CPU while it measured: %s.\n\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), r.cpus, r.loadStart, r.loadEnd, busy*100, verdict)
	fmt.Fprintf(w, "| round trip (%d each, interleaved) | same-instance | cross-instance | cross - same | NATS floor |\n|---|---|---|---|---|\n", figRounds)
	fmt.Fprintf(w, "| p50 | %s | %s | %s | %s |\n", us(r.rtt["same"][0]), us(r.rtt["cross"][0]), us(r.rtt["cross"][0]-r.rtt["same"][0]), us(r.rtt["floor"][0]))
	fmt.Fprintf(w, "| p99 | %s | %s | %s | %s |\n\n", us(r.rtt["same"][1]), us(r.rtt["cross"][1]), us(r.rtt["cross"][1]-r.rtt["same"][1]), us(r.rtt["floor"][1]))
	l := r.legs
	fmt.Fprintf(w, "| one-way leg (p50, %d each) | time | what it crosses |\n|---|---|---|\n", figRounds)
	fmt.Fprintf(w, "| same | %s | client -> relay A -> client |\n", us(l["same"]))
	fmt.Fprintf(w, "| home | %s | client -> relay B -> NATS -> client |\n", us(l["home"]))
	fmt.Fprintf(w, "| owner | %s | client -> NATS -> relay A -> client |\n", us(l["owner"]))
	fmt.Fprintf(w, "| NATS | %s | client -> NATS -> client |\n", us(l["NATS"]))
	fmt.Fprintf(w, "| home + owner - NATS - same | %s | what a cross-instance leg adds: one more relay and one NATS crossing |\n\n", us(l["home"]+l["owner"]-l["NATS"]-l["same"]))
	fmt.Fprintf(w, "| one phone, ~220 B frames (median of %d x %d) | same-instance | cross-instance | ratio |\n|---|---|---|---|\n", figRepeats, figFrames)
	for _, dir := range []string{"up", "down"} {
		s, c := r.median(dir+" same"), r.median(dir+" cross")
		label := map[string]string{"up": "phone -> binary", "down": "binary -> phone"}[dir]
		fmt.Fprintf(w, "| %s | %.0f frames/s | %.0f frames/s | %.2fx |\n", label, s.rate, c.rate, c.rate/s.rate)
	}
	fmt.Fprintf(w, "| NATS alone (this process -> NATS -> echo process) | | %.0f msgs/s | |\n\n", r.median("NATS alone").rate)
	names := []string{"relay A", "relay B", "NATS server", "clients", "NATS echo"}
	fmt.Fprintf(w, "| CPU per frame (median run) | %s | total | relay allocs/frame (A, B) |\n|---|%s---|---|\n", strings.Join(names, " | "), strings.Repeat("---|", len(names)))
	for _, name := range r.order {
		p := r.median(name)
		var cells []string
		var total time.Duration
		for _, n := range names {
			cells = append(cells, strconv.FormatFloat(float64(p.cpu[n].Nanoseconds())/1e3, 'f', 1, 64))
			total += p.cpu[n]
		}
		fmt.Fprintf(w, "| %s (µs) | %s | %.1f | %.2f, %.2f |\n", name, strings.Join(cells, " | "), float64(total.Nanoseconds())/1e3, p.allocs[0], p.allocs[1])
	}
	fmt.Fprintf(w, "\nRelay A holds the binary; the same-instance phone is on A, the cross-instance phone on B.\n")
	fmt.Fprintf(w, "Goals (issue 20): cross - same p50 at most 300 µs: %s; throughput at least 0.8x: up %.2fx, down %.2fx.\n",
		us(r.rtt["cross"][0]-r.rtt["same"][0]), r.median("up cross").rate/r.median("up same").rate, r.median("down cross").rate/r.median("down same").rate)
}
