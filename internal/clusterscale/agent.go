package clusterscale

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/metrics"
	"github.com/pyrycode/relay/internal/relay"
)

// AgentEnv, set in a process's environment (to the agent's JSON
// agentConfig), makes cmd/relay-cluster-scale run one instance of the model
// (RunAgent) instead of the orchestrator. Each instance is its own process
// so that a crash is a real kill -9 and its memory is its own.
const AgentEnv = "RELAY_CLUSTER_SCALE_AGENT"

// agentConfig is what the orchestrator tells an agent at start.
type agentConfig struct {
	NATS  string        `json:"nats"`
	ID    string        `json:"id"`
	Lease time.Duration `json:"lease"` // 0: the relay's default
}

// An agent is one relay instance without sockets: the routing core
// (relay.New) and its cluster backplane (cluster.Start) against the real
// NATS server, with the orchestrator standing in for binaries. It claims
// through Backplane.Acquire exactly as a binary's upgrade does; the claim
// has no slot in the registry behind it, so a probe of it answers "no
// binary here" (a takeover), which the model never meets except in
// failover, where the owner is dead anyway.
//
// Commands and replies are JSON lines on stdin and stdout.
type agentCmd struct {
	Op string `json:"op"` // claim, stats, latency, failover
	// claim: server-ids IDFor(Tag, From..To-1), Conc at a time.
	// latency: N server-ids IDFor(Tag, 0..N-1), one at a time, each
	// released after its claim.
	Tag  int `json:"tag,omitempty"`
	From int `json:"from,omitempty"`
	To   int `json:"to,omitempty"`
	Conc int `json:"conc,omitempty"`
	N    int `json:"n,omitempty"`
	// failover: claim each of IDs, retrying every Interval (a binary
	// redialing), until granted or Timeout.
	IDs      []string      `json:"ids,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
}

type agentReply struct {
	Err string `json:"err,omitempty"`
	// claim
	Granted int     `json:"granted,omitempty"`
	Failed  int     `json:"failed,omitempty"`
	Secs    float64 `json:"secs,omitempty"`
	// latency: microseconds per claim, in order.
	LatencyUS []float64 `json:"latency_us,omitempty"`
	// failover: wall-clock Unix nanoseconds of each grant (0: not granted
	// within the timeout), and how many attempts were refused meanwhile.
	GrantedAt []int64 `json:"granted_at,omitempty"`
	Refused   int64   `json:"refused,omitempty"`
	// stats
	HeapBytes uint64             `json:"heap_bytes,omitempty"`
	Metrics   map[string]float64 `json:"metrics,omitempty"`
}

// IDFor is the model's i-th server-id of group tag: UUIDv4-shaped (36
// bytes, as the daemons mint them), so keys and values have their real
// size.
func IDFor(tag, i int) string {
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", tag, i)
}

// RunAgent runs one instance until stdin closes. It prints one line
// {"ready":...} once the backplane has reached NATS and its bucket.
func RunAgent(cfgJSON string, in io.Reader, out io.Writer) error {
	var cfg agentConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return err
	}
	rl, err := relay.New(relay.Defaults(), relay.Deps{})
	if err != nil {
		return err
	}
	m := metrics.New()
	c, err := cluster.Start(cluster.Options{URLs: []string{cfg.NATS}, InstanceID: cfg.ID, Lease: cfg.Lease}, rl, nil, m)
	if err != nil {
		return err
	}
	a := &agent{c: c, m: m}
	// Warm up: the first claim creates or opens the bucket.
	warm := "warmup-" + cfg.ID
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := a.acquire(warm); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("agent: NATS not reachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Release(warm)
	enc := json.NewEncoder(out)
	if err := enc.Encode(map[string]bool{"ready": true}); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var cmd agentCmd
		var rep agentReply
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			rep.Err = err.Error()
		} else {
			rep = a.do(cmd)
		}
		if err := enc.Encode(rep); err != nil {
			return err
		}
	}
	return sc.Err()
}

type agent struct {
	c *cluster.Cluster
	m *metrics.Metrics
}

// acquire claims one server-id as a binary's upgrade would.
func (a *agent) acquire(id string) (relay.ClaimOutcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.c.Acquire(ctx, id)
}

func (a *agent) do(cmd agentCmd) agentReply {
	switch cmd.Op {
	case "claim":
		return a.claim(cmd)
	case "latency":
		return a.latency(cmd)
	case "failover":
		return a.failover(cmd)
	case "stats":
		return a.stats()
	}
	return agentReply{Err: "unknown op " + strconv.Quote(cmd.Op)}
}

// claim claims a range of server-ids, Conc at a time; a refusal (1013) is
// retried a few times, as a daemon would.
func (a *agent) claim(cmd agentCmd) agentReply {
	conc := max(cmd.Conc, 1)
	var next atomic.Int64
	next.Store(int64(cmd.From))
	var granted, failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cmd.To {
					return
				}
				id := IDFor(cmd.Tag, i)
				ok := false
				for try := 0; try < 5 && !ok; try++ {
					out, err := a.acquire(id)
					ok = err == nil && out != relay.ClaimConflict
					if !ok {
						time.Sleep(50 * time.Millisecond)
					}
				}
				if ok {
					granted.Add(1)
				} else {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return agentReply{Granted: int(granted.Load()), Failed: int(failed.Load()), Secs: time.Since(start).Seconds()}
}

// latency times N fresh claims one after another (each released after).
func (a *agent) latency(cmd agentCmd) agentReply {
	var rep agentReply
	for i := 0; i < cmd.N; i++ {
		id := IDFor(cmd.Tag, i)
		t0 := time.Now()
		out, err := a.acquire(id)
		d := time.Since(t0)
		if err != nil || out != relay.ClaimGranted {
			rep.Failed++
			continue
		}
		rep.LatencyUS = append(rep.LatencyUS, float64(d.Nanoseconds())/1e3)
		a.c.Release(id)
	}
	return rep
}

// failover claims server-ids whose owner was just killed, each retried
// every Interval as a daemon redialing another instance would.
func (a *agent) failover(cmd agentCmd) agentReply {
	rep := agentReply{GrantedAt: make([]int64, len(cmd.IDs))}
	var refused atomic.Int64
	deadline := time.Now().Add(cmd.Timeout)
	var wg sync.WaitGroup
	for i, id := range cmd.IDs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				out, err := a.acquire(id)
				if err == nil && out != relay.ClaimConflict {
					rep.GrantedAt[i] = time.Now().UnixNano()
					return
				}
				refused.Add(1)
				time.Sleep(cmd.Interval)
			}
		}()
	}
	wg.Wait()
	rep.Refused = refused.Load()
	return rep
}

// stats reports the live heap (after a collection) and the cluster's
// counters.
func (a *agent) stats() agentReply {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return agentReply{HeapBytes: ms.HeapAlloc, Metrics: scrape(a.m)}
}

// scrape reads the relay_cluster_* series of m as name{labels} -> value.
func scrape(m *metrics.Metrics) map[string]float64 {
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	for line := range strings.Lines(rec.Body.String()) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "relay_cluster_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// agentMain is RunAgent from the environment, for the command's main.
func agentMain() int {
	if err := RunAgent(os.Getenv(AgentEnv), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "relay-cluster-scale agent:", err)
		return 1
	}
	return 0
}

// MaybeAgent runs the agent and exits when this process was started as
// one; otherwise it returns.
func MaybeAgent() {
	if os.Getenv(AgentEnv) != "" {
		os.Exit(agentMain())
	}
}
