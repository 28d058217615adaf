package loadbench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// Workload kinds.
const (
	StreamP2B = "stream_p2b" // phones stream to their binary
	StreamB2P = "stream_b2p" // binaries stream to their phones
	PingPong  = "pingpong"   // a phone sends, its binary echoes, one in flight
	Idle      = "idle"       // connections held open, heartbeats only
)

// Workload is one measured configuration.
type Workload struct {
	Kind      string `json:"kind"`
	Size      int    `json:"size,omitempty"`  // phone frame bytes
	Binaries  int    `json:"binaries"`        // relay binaries (the forwarder gets as many pairs)
	PhonesPer int    `json:"phones_per"`      // phones per binary
	InFlight  int    `json:"in_flight"`       // streaming: unacknowledged frames per pair
	Conns     int    `json:"conns,omitempty"` // idle: connections held
}

// Name is a short label such as "stream_p2b 512B 16p".
func (w Workload) Name() string {
	switch w.Kind {
	case Idle:
		return fmt.Sprintf("idle %d conns", w.Conns)
	case Ping:
		return fmt.Sprintf("ping %d conns", w.Conns)
	case PingPong:
		return fmt.Sprintf("pingpong %s %dp", sizeLabel(w.Size), w.Binaries*w.PhonesPer)
	}
	return fmt.Sprintf("%s %s %dp", w.Kind, sizeLabel(w.Size), w.Binaries*w.PhonesPer)
}

func sizeLabel(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

// Result is one run of one workload against one server.
type Result struct {
	Workload Workload `json:"workload"`
	Server   string   `json:"server"` // relay or forwarder
	Cycle    int      `json:"cycle"`

	Seconds   float64 `json:"seconds"`
	Messages  int64   `json:"messages"`
	MsgPerSec float64 `json:"msg_per_sec"`
	MBPerSec  float64 `json:"mb_per_sec"`
	// CPUPerMsgUS is the server process's CPU (user+system, all threads)
	// per delivered message, in microseconds.
	CPUPerMsgUS float64 `json:"cpu_per_msg_us"`
	// SyscallsPerMsg is the server's read and write system calls per
	// delivered message.
	SyscallsPerMsg float64 `json:"syscalls_per_msg,omitempty"`
	ServerCPU      float64 `json:"server_cpu_cores"` // cores the server used on average
	RTTP50MS       float64 `json:"rtt_p50_ms,omitempty"`
	RTTP95MS       float64 `json:"rtt_p95_ms,omitempty"`
	RTTP99MS       float64 `json:"rtt_p99_ms,omitempty"`

	// Idle runs.
	ConnsHeld      int     `json:"conns_held,omitempty"` // Workload.Conns rounded to whole binaries or pairs
	SetupPerSec    float64 `json:"setup_per_sec,omitempty"`
	RSSPerConnKiB  float64 `json:"rss_per_conn_kib,omitempty"`
	RSSGrowthKiB   float64 `json:"rss_growth_per_conn_kib,omitempty"` // over the idle window, per connection
	IdleCPUPercent float64 `json:"idle_cpu_percent_of_core,omitempty"`
	IdleSeconds    float64 `json:"idle_seconds,omitempty"`
	// CPUPerPingUS is the relay's CPU over the idle window per ping it
	// sent (every connection once per PingIntervalS).
	CPUPerPingUS  float64   `json:"cpu_per_ping_us,omitempty"`
	PingIntervalS float64   `json:"ping_interval_s,omitempty"`
	RSSSeriesMiB  []float64 `json:"rss_series_mib,omitempty"` // sampled through the idle window
	// MemSettled and MemEnd are the Go runtime's figures when RSS per
	// connection is read and at the window's end (nil: not readable).
	MemSettled *MemStats `json:"mem_settled,omitempty"`
	MemEnd     *MemStats `json:"mem_end,omitempty"`

	// MachineBusy is each CPU's busy share during the run (0..1): what
	// else ran on the machine, the run's own processes included.
	MachineBusy []float64 `json:"machine_busy"`
	// OthersShare is the share of all the machine's CPUs that processes
	// other than the harness and its servers took during the window
	// (0..1): the load the figures were taken under.
	OthersShare float64 `json:"others_share"`
}

// window measures a server process between two instants.
type window struct {
	pid     int
	t0      time.Time
	cpu0    float64
	own0    float64
	sys0    int64
	busy0   []uint64
	total0  []uint64
	msgs0   int64
	counter *atomic.Int64
}

func startWindow(pid int, counter *atomic.Int64) *window {
	w := &window{pid: pid, counter: counter, t0: time.Now()}
	if pid > 0 {
		w.cpu0, _ = cpuSeconds(pid)
		w.sys0 = syscalls(pid)
	}
	w.busy0, w.total0 = machineBusy()
	w.own0 = ownCPU()
	if counter != nil {
		w.msgs0 = counter.Load()
	}
	return w
}

func (w *window) end(r *Result) {
	var msgs int64
	if w.counter != nil {
		msgs = w.counter.Load() - w.msgs0
	}
	r.Seconds = time.Since(w.t0).Seconds()
	var cpu float64
	if w.pid > 0 {
		c1, _ := cpuSeconds(w.pid)
		cpu = c1 - w.cpu0
		r.ServerCPU = cpu / r.Seconds
	}
	b1, t1 := machineBusy()
	own := ownCPU() - w.own0
	var busyAll, totalAll uint64
	for i := range min(len(b1), len(w.busy0)) {
		if dt := t1[i] - w.total0[i]; dt > 0 {
			r.MachineBusy = append(r.MachineBusy, float64(b1[i]-w.busy0[i])/float64(dt))
			busyAll += b1[i] - w.busy0[i]
			totalAll += dt
		}
	}
	if totalAll > 0 {
		others := float64(busyAll)/clockTick - own
		r.OthersShare = max(others/(float64(totalAll)/clockTick), 0)
	}
	r.Messages = msgs
	if msgs > 0 {
		r.MsgPerSec = float64(msgs) / r.Seconds
		r.MBPerSec = r.MsgPerSec * float64(r.Workload.Size) / 1e6
		if w.pid > 0 {
			r.CPUPerMsgUS = cpu / float64(msgs) * 1e6
			r.SyscallsPerMsg = float64(syscalls(w.pid)-w.sys0) / float64(msgs)
		}
	}
}

// runTraffic runs a streaming or ping-pong workload on a fresh fleet.
func runTraffic(ctx context.Context, d *dialer, t target, w Workload, run string, warmup, dur time.Duration) (Result, error) {
	res := Result{Workload: w, Server: t.kind}
	f, err := newFleet(ctx, d, t, run, w.Binaries, w.PhonesPer)
	if err != nil {
		return res, err
	}
	defer f.close()
	frame := frameOf(w.Size)
	f.setFrame(frame)
	inFlight := max(w.InFlight, 1)
	for _, p := range f.pairs {
		p.sem = make(chan struct{}, inFlight)
	}

	var delivered atomic.Int64
	stop := make(chan struct{})
	var senders sync.WaitGroup
	var measuring atomic.Bool
	var rttMu sync.Mutex
	var rtts []time.Duration

	release := releaser(&delivered)
	h := streamHandlers(w.Kind, release)
	switch w.Kind {
	case StreamP2B, StreamB2P:
	case PingPong:
		h.onBinary = func(bin *websocket.Conn, _ *pair, msg []byte) {
			// The relay's phone envelope is itself a valid binary envelope
			// back to that phone; the forwarder's frame goes back as it came.
			_ = bin.Write(context.Background(), websocket.MessageText, msg)
		}
		h.onPhone = func(p *pair, _ []byte) {
			select {
			case p.reply <- struct{}{}:
			default:
			}
		}
	default:
		return res, fmt.Errorf("unknown workload %q", w.Kind)
	}
	f.h.Store(h) // before any sender starts

	for _, p := range f.pairs {
		senders.Add(1)
		switch w.Kind {
		case StreamP2B:
			go func() {
				defer senders.Done()
				streamTo(ctx, stop, p, p.phone, frame)
			}()
		case StreamB2P:
			go func() {
				defer senders.Done()
				streamTo(ctx, stop, p, p.bin, p.toPhone)
			}()
		case PingPong:
			go func() {
				defer senders.Done()
				local := make([]time.Duration, 0, 4096)
				defer func() {
					rttMu.Lock()
					rtts = append(rtts, local...)
					rttMu.Unlock()
				}()
				for {
					select {
					case <-stop:
						return
					default:
					}
					t0 := time.Now()
					if p.phone.Write(ctx, websocket.MessageText, frame) != nil {
						return
					}
					select {
					case <-p.reply:
					case <-stop:
						return
					case <-time.After(10 * time.Second):
						return
					}
					if measuring.Load() {
						local = append(local, time.Since(t0))
						delivered.Add(1)
					}
				}
			}()
		}
	}

	sleepCtx(ctx, warmup)
	measuring.Store(true)
	win := startWindow(t.pid, &delivered)
	sleepCtx(ctx, dur)
	win.end(&res)
	measuring.Store(false)
	close(stop)
	f.close() // unblocks senders stuck on a write
	senders.Wait()
	if res.Messages == 0 {
		return res, fmt.Errorf("%s against the %s delivered nothing", w.Name(), t.kind)
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		q := func(p float64) float64 {
			return float64(rtts[min(int(p*float64(len(rtts))), len(rtts)-1)]) / float64(time.Millisecond)
		}
		res.RTTP50MS, res.RTTP95MS, res.RTTP99MS = q(0.50), q(0.95), q(0.99)
	}
	return res, nil
}

// streamTo writes msg on c for as long as the pair has in-flight room.
func streamTo(ctx context.Context, stop chan struct{}, p *pair, c *websocket.Conn, msg []byte) {
	for {
		select {
		case p.sem <- struct{}{}:
		case <-stop:
			return
		}
		if c.Write(ctx, websocket.MessageText, msg) != nil {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// runIdle connects w.Conns connections to a fresh server process and
// holds them for idle, sampling RSS. newProc starts the server.
func runIdle(ctx context.Context, d *dialer, w Workload, kind string, idle, settle, ping time.Duration, newProc func() (*proc, error)) (Result, error) {
	res := Result{Workload: w, Server: kind}
	p, err := newProc()
	if err != nil {
		return res, err
	}
	defer p.stop()
	t := target{kind: kind, base: "ws://" + p.addr, pid: p.pid}
	sleepCtx(ctx, 300*time.Millisecond)
	rss0, err := rssBytes(p.pid)
	if err != nil {
		return res, err
	}
	// Relay: binaries of PhonesPer phones; forwarder: pairs of two legs.
	per := w.PhonesPer + 1
	if kind == kindForwarder {
		per = 2
	}
	groups := max(w.Conns/per, 1)
	const workers = 32
	fleets := make([]*fleet, groups)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	t0 := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				g := int(next.Add(1)) - 1
				if g >= groups || ctx.Err() != nil {
					return
				}
				var f *fleet
				var err error
				if kind == kindRelay {
					f, err = newFleet(ctx, d, t, fmt.Sprintf("idle%d", g), 1, w.PhonesPer)
				} else {
					f, err = newFleet(ctx, d, t, fmt.Sprintf("idle%d", g), 1, 1)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				fleets[g] = f
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, f := range fleets {
			if f != nil {
				go f.close()
			}
		}
	}()
	if firstErr != nil {
		return res, firstErr
	}
	conns := groups * per
	res.ConnsHeld = conns
	res.SetupPerSec = float64(conns) / time.Since(t0).Seconds()
	sleepCtx(ctx, settle) // set-up garbage is collected, handshakes finished
	rss1, _ := rssBytes(p.pid)
	res.RSSPerConnKiB = float64(rss1-rss0) / float64(conns) / 1024
	res.MemSettled = scrapeMem(ctx, p.memURL)
	win := startWindow(p.pid, nil)
	step := max(idle/12, 100*time.Millisecond)
	for el := time.Duration(0); el < idle; el += step {
		sleepCtx(ctx, step)
		r, _ := rssBytes(p.pid)
		res.RSSSeriesMiB = append(res.RSSSeriesMiB, float64(r)/(1<<20))
	}
	win.end(&res)
	rss2, _ := rssBytes(p.pid)
	res.MemEnd = scrapeMem(ctx, p.memURL)
	res.IdleSeconds = res.Seconds
	res.IdleCPUPercent = res.ServerCPU * 100
	res.RSSGrowthKiB = float64(rss2-rss1) / float64(conns) / 1024
	if kind == kindRelay && ping > 0 {
		res.PingIntervalS = ping.Seconds()
		if pings := float64(conns) * res.Seconds / ping.Seconds(); pings > 0 {
			res.CPUPerPingUS = res.ServerCPU * res.Seconds / pings * 1e6
		}
	}
	return res, ctx.Err()
}

// releaser returns what a receiving side does with a stream's message:
// free one of its pair's in-flight slots and count the delivery.
func releaser(delivered *atomic.Int64) func(*pair) {
	return func(p *pair) {
		if p == nil {
			return
		}
		select {
		case <-p.sem:
			delivered.Add(1)
		default:
		}
	}
}

// streamHandlers releases a slot on the side a stream workload of kind
// delivers to (the binary for phone->binary, the phone for binary->phone);
// every other handler ignores its message.
func streamHandlers(kind string, release func(*pair)) *handlers {
	h := &handlers{onPhone: func(*pair, []byte) {}, onBinary: func(*websocket.Conn, *pair, []byte) {}}
	switch kind {
	case StreamP2B:
		h.onBinary = func(_ *websocket.Conn, p *pair, _ []byte) { release(p) }
	case StreamB2P:
		h.onPhone = func(p *pair, _ []byte) { release(p) }
	}
	return h
}
