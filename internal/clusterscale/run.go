// Package clusterscale is the cluster's scale model (docs/cluster.md,
// "Scale model"): 1 to 10 relay instances and 1,000 to 100,000 server-ids
// on one real NATS server, the claims driven through each instance's
// backplane (relay.Backplane.Acquire, as a binary's upgrade drives it) by a
// load generator instead of 100,000 sockets, which are not what it
// measures. Per cell it counts what the coordination costs: claim latency,
// KV writes/s and NATS messages/s at steady state (counted by the server,
// not estimated), memory per owned server-id on an instance, bytes in the
// bucket, and failover time after a kill -9 of an owner.
//
// cmd/relay-cluster-scale runs it (`make cluster-scale`); each instance is
// that command re-executed as an agent (agent.go).
package clusterscale

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// Config is one run of the model. The zero value of a field is its
// default.
type Config struct {
	Instances []int         // instance counts (default 1, 2, 5, 10)
	ServerIDs []int         // server-id counts (default 1k, 10k, 100k)
	Lease     time.Duration // --cluster-lease of every instance (0: the relay's default)
	// Window is the steady-state window whose KV writes and NATS messages
	// are counted (default 10 s), after Settle (default lease/3 + 1 s, the
	// relay's default lease when Lease is 0) from the last claim.
	Window, Settle time.Duration
	Conc           int // concurrent claims per instance while loading (default 16)
	Latency        int // claims timed one at a time per cell (default 200)
	// Trials is the kill -9s per cell with two or more instances (default
	// 3); Sample the victim's server-ids a survivor redials every Redial
	// (default 20, every 100 ms) after each.
	Trials, Sample int
	Redial         time.Duration
	// Refill caps the fresh server-ids a killed instance's replacement
	// claims (default 5000).
	Refill int
	// Exe is the executable to run as an agent (default this process's).
	Exe string
	// Progress gets one line per step (nil: none).
	Progress io.Writer

	lease time.Duration // Lease, or the relay's default
}

func (c Config) withDefaults(defaultLease time.Duration) Config {
	if len(c.Instances) == 0 {
		c.Instances = []int{1, 2, 5, 10}
	}
	if len(c.ServerIDs) == 0 {
		c.ServerIDs = []int{1000, 10000, 100000}
	}
	c.lease = c.Lease
	if c.lease == 0 {
		c.lease = defaultLease
	}
	if c.Window == 0 {
		c.Window = 10 * time.Second
	}
	if c.Settle == 0 {
		c.Settle = c.lease/3 + time.Second
	}
	if c.Conc == 0 {
		c.Conc = 16
	}
	if c.Latency == 0 {
		c.Latency = 200
	}
	if c.Trials == 0 {
		c.Trials = 3
	}
	if c.Sample == 0 {
		c.Sample = 20
	}
	if c.Redial == 0 {
		c.Redial = 100 * time.Millisecond
	}
	if c.Refill == 0 {
		c.Refill = 5000
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return c
}

// Report is one run's figures.
type Report struct {
	Started   time.Time  `json:"started"`
	Seconds   float64    `json:"seconds"`
	CPUs      int        `json:"cpus"`
	LoadStart [3]float64 `json:"loadavg_start"`
	LoadEnd   [3]float64 `json:"loadavg_end"`
	LeaseMS   int64      `json:"lease_ms"`
	WindowS   float64    `json:"window_s"`
	Cells     []Cell     `json:"cells"`
}

// Cell is one (instances, server-ids) point.
type Cell struct {
	Instances int `json:"instances"`
	ServerIDs int `json:"server_ids"`
	// Loading: every instance claims its share, Conc at a time.
	LoadSeconds   float64 `json:"load_seconds"`
	ClaimsPerSec  float64 `json:"claims_per_sec"`
	ClaimsFailed  int     `json:"claims_failed"`
	LatencyP50US  float64 `json:"latency_p50_us"`
	LatencyP99US  float64 `json:"latency_p99_us"`
	LatencyFailed int     `json:"latency_failed"`
	// Steady state, counted over the window: KV writes are the bucket
	// streams' sequence numbers consumed (every create, update and delete
	// takes one); NATS messages are the server's in_msgs and out_msgs.
	KVWrites         int64   `json:"kv_writes"`
	KVWritesPerSec   float64 `json:"kv_writes_per_sec"`
	NATSInPerSec     float64 `json:"nats_in_msgs_per_sec"`
	NATSOutPerSec    float64 `json:"nats_out_msgs_per_sec"`
	BucketKeys       uint64  `json:"bucket_keys"`
	BucketBytes      uint64  `json:"bucket_bytes"`
	HeapPerIDBytes   float64 `json:"heap_per_id_bytes"`
	RefreshErrors    float64 `json:"refresh_errors"`
	ClaimsLost       float64 `json:"claims_lost"`
	ClaimsReasserted float64 `json:"claims_reasserted"`
	// Failover: milliseconds from the victim's death to each grant of one
	// of its server-ids on a survivor; Missed were not granted in time.
	FailoverMS     []float64 `json:"failover_ms,omitempty"`
	FailoverMissed int       `json:"failover_missed,omitempty"`
	Err            string    `json:"err,omitempty"`
}

// bucketPrefix selects the cluster's JetStream streams (KV buckets of the
// default cluster name "relay").
const bucketPrefix = "KV_relay-"

// Run runs every cell of cfg in turn, each on a fresh NATS server.
func Run(ctx context.Context, cfg Config, defaultLease time.Duration) (*Report, error) {
	cfg = cfg.withDefaults(defaultLease)
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cfg.Exe = exe
	}
	rep := &Report{Started: time.Now(), CPUs: runtime.NumCPU(), LoadStart: loadAvg(), LeaseMS: cfg.lease.Milliseconds(), WindowS: cfg.Window.Seconds()}
	for _, n := range cfg.Instances {
		for _, s := range cfg.ServerIDs {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			fmt.Fprintf(cfg.Progress, "cell: %d instances, %d server-ids\n", n, s)
			cell, err := runCell(ctx, cfg, n, s)
			if err != nil {
				cell.Err = err.Error()
				fmt.Fprintf(cfg.Progress, "  error: %v\n", err)
			}
			rep.Cells = append(rep.Cells, cell)
		}
	}
	rep.LoadEnd = loadAvg()
	rep.Seconds = time.Since(rep.Started).Seconds()
	return rep, nil
}

// runCell measures one (instances, server-ids) point.
func runCell(ctx context.Context, cfg Config, n, s int) (cell Cell, err error) {
	cell = Cell{Instances: n, ServerIDs: s}
	dir, err := os.MkdirTemp("", "relay-cluster-scale-")
	if err != nil {
		return cell, err
	}
	defer os.RemoveAll(dir)
	ns, err := natstest.Start(dir, 0)
	if err != nil {
		return cell, err
	}
	defer ns.Stop()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		return cell, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return cell, err
	}

	agents := make([]*agentProc, n)
	defer func() {
		for _, a := range agents {
			if a != nil {
				a.kill()
			}
		}
	}()
	for i := range agents {
		if agents[i], err = startAgent(cfg, ns.URL(), fmt.Sprintf("i%d", i)); err != nil {
			return cell, err
		}
	}

	// Load: instance i claims group i's share.
	share := func(i int) int { return s/n + boolInt(i < s%n) }
	heapBefore := make([]uint64, n)
	for i, a := range agents {
		st, err := a.call(agentCmd{Op: "stats"})
		if err != nil {
			return cell, err
		}
		heapBefore[i] = st.HeapBytes
	}
	t0 := time.Now()
	reps, err := callAll(agents, func(i int) agentCmd {
		return agentCmd{Op: "claim", Tag: i, From: 0, To: share(i), Conc: cfg.Conc}
	})
	if err != nil {
		return cell, err
	}
	cell.LoadSeconds = time.Since(t0).Seconds()
	granted := 0
	for _, r := range reps {
		granted += r.Granted
		cell.ClaimsFailed += r.Failed
	}
	cell.ClaimsPerSec = float64(granted) / cell.LoadSeconds
	fmt.Fprintf(cfg.Progress, "  loaded %d claims in %.1fs (%.0f/s, %d failed)\n", granted, cell.LoadSeconds, cell.ClaimsPerSec, cell.ClaimsFailed)

	// Steady state.
	sleepCtx(ctx, cfg.Settle)
	before, err := counters(ctx, ns, js)
	if err != nil {
		return cell, err
	}
	sleepCtx(ctx, cfg.Window)
	after, err := counters(ctx, ns, js)
	if err != nil {
		return cell, err
	}
	secs := after.at.Sub(before.at).Seconds()
	cell.KVWrites = int64(after.kvSeq - before.kvSeq)
	cell.KVWritesPerSec = float64(cell.KVWrites) / secs
	cell.NATSInPerSec = float64(after.nats.InMsgs-before.nats.InMsgs) / secs
	cell.NATSOutPerSec = float64(after.nats.OutMsgs-before.nats.OutMsgs) / secs
	cell.BucketKeys, cell.BucketBytes = after.keys, after.bytes
	var heapDelta float64
	for i, a := range agents {
		st, err := a.call(agentCmd{Op: "stats"})
		if err != nil {
			return cell, err
		}
		heapDelta += float64(st.HeapBytes) - float64(heapBefore[i])
		cell.RefreshErrors += st.Metrics["relay_cluster_lease_refresh_errors_total"]
		cell.ClaimsLost += st.Metrics[`relay_cluster_claims_total{result="lost"}`]
		cell.ClaimsReasserted += st.Metrics[`relay_cluster_claims_total{result="reasserted"}`]
	}
	if granted > 0 {
		cell.HeapPerIDBytes = heapDelta / float64(granted)
	}
	fmt.Fprintf(cfg.Progress, "  steady: %.1f KV writes/s, NATS %.1f in/s %.1f out/s; bucket %d keys %d bytes; heap %.0f B/id; refresh errors %.0f, lost %.0f, reasserted %.0f\n",
		cell.KVWritesPerSec, cell.NATSInPerSec, cell.NATSOutPerSec, cell.BucketKeys, cell.BucketBytes, cell.HeapPerIDBytes,
		cell.RefreshErrors, cell.ClaimsLost, cell.ClaimsReasserted)

	// Claim latency: fresh claims one at a time on instance 0.
	lr, err := agents[0].call(agentCmd{Op: "latency", Tag: 1 << 20, N: cfg.Latency})
	if err != nil {
		return cell, err
	}
	cell.LatencyFailed = lr.Failed
	cell.LatencyP50US, cell.LatencyP99US = percentile(lr.LatencyUS, 50), percentile(lr.LatencyUS, 99)
	fmt.Fprintf(cfg.Progress, "  claim latency p50 %.0f µs, p99 %.0f µs (%d failed)\n", cell.LatencyP50US, cell.LatencyP99US, cell.LatencyFailed)

	// Failover: kill -9 an owner; instance 0 redials some of its
	// server-ids; a replacement (new id) takes the victim's place.
	if n < 2 {
		return cell, nil
	}
	tags := make([]int, n) // the group whose server-ids agent i holds
	sizes := make([]int, n)
	for i := range tags {
		tags[i], sizes[i] = i, share(i)
	}
	for trial := 0; trial < cfg.Trials; trial++ {
		v := 1 + trial%(n-1)
		ids := make([]string, 0, cfg.Sample)
		for k := 0; k < cfg.Sample && k < sizes[v]; k++ {
			ids = append(ids, IDFor(tags[v], k*sizes[v]/min(cfg.Sample, sizes[v])))
		}
		agents[v].kill()
		dead := time.Now()
		fr, err := agents[0].call(agentCmd{Op: "failover", IDs: ids, Interval: cfg.Redial, Timeout: 3*cfg.lease + 10*time.Second})
		if err != nil {
			return cell, err
		}
		var ms []float64
		for _, at := range fr.GrantedAt {
			if at == 0 {
				cell.FailoverMissed++
				continue
			}
			ms = append(ms, float64(at-dead.UnixNano())/1e6)
		}
		cell.FailoverMS = append(cell.FailoverMS, ms...)
		fmt.Fprintf(cfg.Progress, "  failover %d: %d of %d granted, %.0f..%.0f ms after the kill\n", trial+1, len(ms), len(ids), minOf(ms), maxOf(ms))
		// The replacement: a new instance id, fresh server-ids.
		tags[v] = 1<<21 + trial*16 + v
		sizes[v] = min(share(v), cfg.Refill)
		if agents[v], err = startAgent(cfg, ns.URL(), fmt.Sprintf("i%d-r%d", v, trial)); err != nil {
			return cell, err
		}
		if _, err := agents[v].call(agentCmd{Op: "claim", Tag: tags[v], To: sizes[v], Conc: cfg.Conc}); err != nil {
			return cell, err
		}
	}
	return cell, nil
}

type snapshot struct {
	at          time.Time
	nats        natstest.Counts
	kvSeq       uint64
	keys, bytes uint64
}

// counters reads the server's message counters and the cluster's buckets.
func counters(ctx context.Context, ns *natstest.Server, js jetstream.JetStream) (snapshot, error) {
	var s snapshot
	s.at = time.Now()
	c, err := ns.Counts()
	if err != nil {
		return s, err
	}
	s.nats = c
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		if !strings.HasPrefix(name, bucketPrefix) {
			continue
		}
		st, err := js.Stream(ctx, name)
		if err != nil {
			return s, err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return s, err
		}
		s.kvSeq += info.State.LastSeq
		s.keys += info.State.Msgs
		s.bytes += info.State.Bytes
	}
	return s, names.Err()
}

// agentProc is one running agent.
type agentProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startAgent(cfg Config, url, id string) (*agentProc, error) {
	ac, _ := json.Marshal(agentConfig{NATS: url, ID: id, Lease: cfg.Lease})
	cmd := exec.Command(cfg.Exe)
	cmd.Env = append(os.Environ(), AgentEnv+"="+string(ac))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the run
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &agentProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	a.out.Buffer(make([]byte, 1<<20), 64<<20)
	if !a.out.Scan() || !strings.Contains(a.out.Text(), `"ready"`) {
		a.kill()
		return nil, fmt.Errorf("agent %s did not start: %v", id, a.out.Err())
	}
	return a, nil
}

// call sends one command and waits for its reply.
func (a *agentProc) call(c agentCmd) (agentReply, error) {
	if err := a.send(c); err != nil {
		return agentReply{}, err
	}
	return a.reply()
}

func (a *agentProc) send(c agentCmd) error {
	b, _ := json.Marshal(c)
	_, err := a.in.Write(append(b, '\n'))
	return err
}

func (a *agentProc) reply() (agentReply, error) {
	var r agentReply
	if !a.out.Scan() {
		return r, fmt.Errorf("agent gone: %v", a.out.Err())
	}
	if err := json.Unmarshal(a.out.Bytes(), &r); err != nil {
		return r, err
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

// kill is a crash: SIGKILL, no release of its claims.
func (a *agentProc) kill() {
	_ = a.cmd.Process.Kill()
	_ = a.cmd.Wait()
}

// callAll sends each agent its command and collects every reply.
func callAll(agents []*agentProc, cmd func(i int) agentCmd) ([]agentReply, error) {
	for i, a := range agents {
		if err := a.send(cmd(i)); err != nil {
			return nil, err
		}
	}
	reps := make([]agentReply, len(agents))
	for i, a := range agents {
		r, err := a.reply()
		if err != nil {
			return nil, err
		}
		reps[i] = r
	}
	return reps, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// percentile is the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	k := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(k, len(s)-1))]
}

func minOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := 0.0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// loadAvg is /proc/loadavg's 1, 5 and 15 minute averages.
func loadAvg() (l [3]float64) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	_, _ = fmt.Sscan(string(b), &l[0], &l[1], &l[2])
	return l
}
