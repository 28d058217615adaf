package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// fleet is the system under test: a 3-node NATS cluster, three relay
// processes, and a CutLink from every relay to every NATS node.
type fleet struct {
	cfg   Config
	h     *History
	start time.Time

	nodes []*natstest.Server
	urls  []string             // the nodes' client URLs
	links [][]*attacks.CutLink // [relay][node]
	rs    []*relayProc
}

// relayProc is one instance: its current process and every earlier one
// (their logs are read after the run).
type relayProc struct {
	idx  int
	id   string
	args []string

	mu      sync.Mutex
	proc    *attacks.Process // nil while killed
	procs   []*attacks.Process
	stopped bool
	holed   bool // its links are cut or blackholed
}

func (f *fleet) now() T { return time.Since(f.start) }

// instanceID names relay i in the cluster (a, b, c).
func instanceID(i int) string { return string(rune('a' + i)) }

// startFleet starts NATS, the links and the relays, and waits until every
// relay is connected.
func startFleet(ctx context.Context, cfg Config, h *History, dir string, start time.Time) (*fleet, error) {
	f := &fleet{cfg: cfg, h: h, start: start}
	var routes []string
	var ports []int
	for range 3 {
		p, err := natstest.FreePort()
		if err != nil {
			return f, err
		}
		ports = append(ports, p)
		routes = append(routes, natstest.RouteURL(p))
	}
	for i := range 3 {
		ns, err := natstest.StartConfig(natstest.Config{Dir: fmt.Sprintf("%s/nats-%d", dir, i), ClusterName: "chaos",
			ServerName: fmt.Sprintf("n%d", i+1), RoutePort: ports[i], Routes: routes, NoAdvertise: true})
		if err != nil {
			return f, fmt.Errorf("nats node %d: %w", i, err)
		}
		f.nodes = append(f.nodes, ns)
		f.urls = append(f.urls, ns.URL())
	}
	if err := f.jetStreamReady(ctx); err != nil {
		return f, err
	}
	for i := range 3 {
		var row []*attacks.CutLink
		var urls []string
		for _, u := range f.urls {
			l, err := attacks.NewCutLink(u)
			if err != nil {
				return f, err
			}
			row = append(row, l)
			urls = append(urls, l.URL())
		}
		f.links = append(f.links, row)
		c := cfg
		args := []string{"serve", "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
			"--cluster-nats", strings.Join(urls, ","), "--instance-id", instanceID(i), "--cluster-replicas", "3",
			"--cluster-lease", c.Lease.String(), "--grace-period", c.Grace.String(), "--probe-timeout", c.Probe.String(),
			"--ping-interval", c.PingInterval.String(), "--pong-timeout", c.PongTimeout.String(), "--close-timeout", "300ms",
			"--upgrade-rate", "10000", "--upgrade-burst", "10000", "--max-conns-per-ip", "4096", "--max-sockets-per-ip", "8192",
			"--max-message-bytes", fmt.Sprint(c.MaxMessage), "--phone-queue-bytes", fmt.Sprint(c.PhoneQueue),
			"--max-queued-bytes", fmt.Sprint(c.MaxQueued), "--socket-send-buffer", fmt.Sprint(c.SocketSendBuffer),
			"--log-level", "info"}
		f.rs = append(f.rs, &relayProc{idx: i, id: instanceID(i), args: args})
	}
	for _, r := range f.rs {
		if err := f.startRelay(ctx, r); err != nil {
			return f, err
		}
	}
	if !f.allConnected(ctx, 30*time.Second) {
		return f, errors.New("chaos: the relays did not all connect to NATS within 30s")
	}
	for i := range f.rs {
		if err := f.warmUp(ctx, i); err != nil {
			return f, err
		}
	}
	return f, nil
}

// warmUp waits until relay i accepts a claim (the claims bucket exists
// and has a leader), so that the run starts on a working cluster.
func (f *fleet) warmUp(ctx context.Context, i int) error {
	h := http.Header{}
	h.Set("x-pyrycode-server", fmt.Sprintf("chaos-warmup-%d", i))
	h.Set("x-pyrycode-version", "chaos")
	h.Set("user-agent", "chaos/warmup")
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		ws, resp, err := websocket.Dial(c, f.addr(i)+"/v1/server", &websocket.DialOptions{HTTPHeader: h})
		cancel()
		if resp != nil && resp.Body != nil {
			resp.Body.Close()
		}
		if err == nil {
			c, cancel := context.WithTimeout(ctx, time.Second)
			_, _, err = ws.Read(c)
			cancel()
			if errors.Is(err, context.DeadlineExceeded) { // held: accepted
				_ = ws.Close(websocket.StatusNormalClosure, "")
				return nil
			}
			_ = ws.CloseNow()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("chaos: relay %s accepted no claim within 60s", instanceID(i))
}

// jetStreamReady waits until the NATS cluster has elected a meta leader.
func (f *fleet) jetStreamReady(ctx context.Context) error {
	nc, err := nats.Connect(strings.Join(f.urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		_, err = js.AccountInfo(c)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("chaos: JetStream cluster not ready: %w", err)
}

func (f *fleet) startRelay(ctx context.Context, r *relayProc) error {
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	p, err := attacks.StartProcess(c, f.cfg.Relay, r.args...)
	if err != nil {
		if p != nil {
			return fmt.Errorf("start relay %s: %w\n%s", r.id, err, tail(p.LogText(), 2000))
		}
		return fmt.Errorf("start relay %s: %w", r.id, err)
	}
	r.mu.Lock()
	r.proc, r.stopped = p, false
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return nil
}

// addr is relay i's ws:// address, "" while it is killed.
func (f *fleet) addr(i int) string {
	r := f.rs[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return ""
	}
	return "ws://" + r.proc.Addr
}

func (f *fleet) proc(i int) *attacks.Process {
	r := f.rs[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

// connected reports whether relay i says it is connected to NATS.
func (f *fleet) connected(ctx context.Context, i int) bool {
	p := f.proc(i)
	if p == nil {
		return false
	}
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := p.Metric(c, "relay_cluster_nats_connected")
	return err == nil && v == 1
}

func (f *fleet) allConnected(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		all := true
		for i := range f.rs {
			all = all && f.connected(ctx, i)
		}
		if all {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// kill sends SIGKILL to relay i.
func (f *fleet) kill(i int) {
	r := f.rs[i]
	r.mu.Lock()
	p, stopped := r.proc, r.stopped
	r.proc, r.stopped = nil, false
	r.mu.Unlock()
	if p != nil {
		if stopped {
			_ = p.Signal(syscall.SIGCONT)
		}
		p.Kill()
	}
}

// restart starts relay i again after kill (same id, same links).
func (f *fleet) restart(ctx context.Context, i int) error {
	if f.proc(i) != nil {
		return nil
	}
	return f.startRelay(ctx, f.rs[i])
}

func (f *fleet) signal(i int, stop bool) {
	r := f.rs[i]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.stopped == stop {
		return
	}
	sig := syscall.SIGCONT
	if stop {
		sig = syscall.SIGSTOP
	}
	if r.proc.Signal(sig) == nil {
		r.stopped = stop
	}
}

// partition cuts (or blackholes) every NATS link of relay i; heal undoes it.
func (f *fleet) partition(i int, blackhole bool) {
	f.rs[i].mu.Lock()
	f.rs[i].holed = true
	f.rs[i].mu.Unlock()
	for _, l := range f.links[i] {
		if blackhole {
			l.Blackhole()
		} else {
			l.Cut()
		}
	}
}

func (f *fleet) heal(i int) {
	for _, l := range f.links[i] {
		l.Heal()
	}
	f.rs[i].mu.Lock()
	f.rs[i].holed = false
	f.rs[i].mu.Unlock()
}

// online reports whether relay i is running, not stopped, not
// partitioned, and has a connection through one of its links.
func (f *fleet) online(i int) bool {
	r := f.rs[i]
	r.mu.Lock()
	up := r.proc != nil && !r.stopped && !r.holed
	r.mu.Unlock()
	if !up {
		return false
	}
	for _, l := range f.links[i] {
		if l.Conns() > 0 {
			return true
		}
	}
	return false
}

// sampleOnline records, until ctx ends, the intervals each relay was not
// online (History.Offline); it closes done when it has recorded the last.
func (f *fleet) sampleOnline(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	off := make([]T, len(f.rs)) // start of the current offline interval, 0: online
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		now := f.now()
		for i := range f.rs {
			on := f.online(i)
			switch {
			case !on && off[i] == 0:
				off[i] = now
			case on && off[i] != 0:
				from := off[i]
				f.h.update(func() { f.h.Offline[i] = append(f.h.Offline[i], Interval{from, now}) })
				off[i] = 0
			}
		}
		select {
		case <-ctx.Done():
			for i := range f.rs {
				if off[i] != 0 {
					from := off[i]
					f.h.update(func() { f.h.Offline[i] = append(f.h.Offline[i], Interval{from, now}) })
				}
			}
			return
		case <-tick.C:
		}
	}
}

// probeLive records, until ctx ends, the times each running relay took
// over a second to answer GET /livez on its metrics listener
// (History.Starved), and the times this process itself was not run for
// over half a second (History.Paused).
func (f *fleet) probeLive(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
	for i := range f.rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				p := f.proc(i)
				addr := ""
				if p != nil {
					addr = metricsListener(p)
				}
				f.rs[i].mu.Lock()
				stopped := f.rs[i].stopped
				f.rs[i].mu.Unlock()
				if addr != "" && !stopped {
					from := f.now()
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/livez", nil)
					if resp, err := hc.Do(req); err == nil {
						resp.Body.Close()
						if to := f.now(); to-from > time.Second {
							f.h.update(func() { f.h.Starved[i] = append(f.h.Starved[i], Interval{from, to}) })
						}
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	last := f.now()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		now := f.now()
		if now-last > 550*time.Millisecond {
			from := last + 50*time.Millisecond
			f.h.update(func() { f.h.Paused = append(f.h.Paused, Interval{from, now}) })
		}
		last = now
	}
	wg.Wait()
}

// metricsListener is p's metrics listener address, from its log.
func metricsListener(p *attacks.Process) string {
	for _, line := range p.Log() {
		var m struct {
			Event    string `json:"event"`
			Listener string `json:"listener"`
			Addr     string `json:"addr"`
		}
		if strings.Contains(line, `"listening"`) && json.Unmarshal([]byte(line), &m) == nil && m.Event == "listening" && m.Listener == "metrics" {
			return m.Addr
		}
	}
	return ""
}

// accepted marks every binary some relay logged binary_claimed for (its
// user agent names it: chaos/b<ID>).
func (f *fleet) accepted() {
	for _, r := range f.rs {
		r.mu.Lock()
		procs := append([]*attacks.Process(nil), r.procs...)
		r.mu.Unlock()
		for _, p := range procs {
			for _, line := range p.Log() {
				if !strings.Contains(line, `"binary_claimed"`) {
					continue
				}
				var m struct {
					Time  time.Time `json:"time"`
					Event string    `json:"event"`
					UA    string    `json:"user_agent"`
				}
				if json.Unmarshal([]byte(line), &m) != nil || m.Event != "binary_claimed" {
					continue
				}
				var id int
				if _, err := fmt.Sscanf(m.UA, "chaos/b%d", &id); err == nil {
					// The log's clock is the machine's wall clock, as is
					// the run's start; its resolution is a millisecond.
					at := m.Time.Sub(f.start) + time.Millisecond
					f.h.update(func() {
						if c := f.h.Conns[id]; c != nil {
							c.Accepted, c.ClaimedAt = true, at
						}
					})
				}
			}
		}
	}
}

// gauges are the gauges that must read zero once the clients are gone.
var gauges = []string{"relay_queued_bytes", "relay_phones", "relay_binaries", "relay_cluster_proxies", "relay_grace_slots"}

// settleGauges waits until every gauge of every relay reads 0 (up to d)
// and records what it read.
func (f *fleet) settleGauges(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for i := range f.rs {
		p := f.proc(i)
		if p == nil {
			continue
		}
		vals := map[string]float64{}
		for _, g := range gauges {
			var v float64
			var err error
			for {
				c, cancel := context.WithTimeout(ctx, 2*time.Second)
				v, err = p.Metric(c, g)
				cancel()
				if err == nil && v == 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			vals[g] = v
			if err != nil || v != 0 {
				msg := fmt.Sprintf("instance %d: %s = %v after quiescence (grace and lease over)", i, g, v)
				if err != nil {
					msg = fmt.Sprintf("instance %d: %s unreadable: %v", i, g, err)
				}
				f.h.update(func() { f.h.GaugeErrs = append(f.h.GaugeErrs, msg) })
			}
		}
		f.h.update(func() { f.h.Gauges[i] = vals })
	}
}

// logs returns the tail of every relay's log, for a failure report.
func (f *fleet) logs(n int) string {
	var b strings.Builder
	for _, r := range f.rs {
		r.mu.Lock()
		procs := append([]*attacks.Process(nil), r.procs...)
		r.mu.Unlock()
		for g, p := range procs {
			fmt.Fprintf(&b, "--- relay %s (start %d) log tail:\n%s\n", r.id, g+1, tail(p.LogText(), n))
		}
	}
	return b.String()
}

// close stops everything.
func (f *fleet) close() {
	for i := range f.rs {
		f.signal(i, false)
		f.kill(i)
	}
	for _, row := range f.links {
		for _, l := range row {
			l.Close()
		}
	}
	for _, n := range f.nodes {
		n.Stop()
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
