package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
)

// driver runs the traffic: one daemon per tenant (its binary claims,
// serves, leaves and reclaims on random instances), a few phone slots per
// tenant (phones join random instances, send, leave, come back), and the
// helpers the faults use (squatting binaries, bursts, pauses).
type driver struct {
	f      *fleet
	h      *History
	cfg    Config
	hc     *http.Client
	nc     *nats.Conn // the rogue's own NATS connection
	quiet  atomic.Bool
	quietC chan struct{}
	wg     sync.WaitGroup

	tenants []*tenant
	seeds   atomic.Uint64
}

// tenant is one server-id and its live connections.
type tenant struct {
	idx int
	sid string

	mu     sync.Mutex
	bins   map[int]*client
	phones map[int]*client
}

// client is one live WebSocket of the harness.
type client struct {
	d    *driver
	t    *tenant
	c    *Conn
	ws   *websocket.Conn
	done chan struct{}

	gateMu sync.Mutex
	gate   chan struct{} // non-nil while the reader is paused

	// pin: the daemon keeps this binary open until then (a split brain
	// being played needs the cut-off owner's binary on after the heal).
	pin atomic.Int64

	wmu sync.Mutex // one writer at a time, so a stream's order is its send order
	seq int        // a phone's next frame
	// A binary's phones, learnt from their frames: conn_id -> phone.
	peers map[string]*peer
}

type peer struct {
	phone int
	seq   int // the binary's next frame to it
}

func newDriver(f *fleet, h *History, cfg Config) *driver {
	d := &driver{f: f, h: h, cfg: cfg, quietC: make(chan struct{})}
	d.seeds.Store(uint64(cfg.Seed))
	dialer := &net.Dialer{Timeout: 3 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, clientRcvBuf)
		})
		return errors.Join(err, serr)
	}}
	d.hc = &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, Proxy: nil}}
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 1))
	marks := []byte("~.-_")
	var base string
	for i := 0; i < cfg.Tenants; i++ {
		// Tenants come in groups of four that differ only in one of the
		// server-id's punctuation characters (~ . - _): wherever a claim
		// key or a lookup maps two of them to one (TM-CLU-1), two tenants
		// meet.
		if i%len(marks) == 0 {
			base = fmt.Sprintf("chaos%x-%d", rng.Uint32(), i/len(marks))
		}
		d.tenants = append(d.tenants, &tenant{idx: i, sid: fmt.Sprintf("%s%cq", base, marks[i%len(marks)]), bins: map[int]*client{}, phones: map[int]*client{}})
	}
	return d
}

// rng is a fresh generator for one actor, from the run's seed.
func (d *driver) rng() *rand.Rand {
	return rand.New(rand.NewPCG(uint64(d.cfg.Seed), d.seeds.Add(1)))
}

func dur(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// sleep waits d, or less if the run quiesces; it reports whether the
// driver is still running.
func (d *driver) sleep(t time.Duration) bool {
	select {
	case <-time.After(t):
		return !d.quiet.Load()
	case <-d.quietC:
		return false
	}
}

// start runs every tenant's daemon and phone slots until quiesce.
func (d *driver) start() {
	for _, t := range d.tenants {
		d.wg.Add(1)
		go d.daemon(t, d.rng())
		for range d.cfg.PhonesPerTenant {
			d.wg.Add(1)
			go d.phoneSlot(t, d.rng())
		}
	}
}

// pickInst picks an instance that is running (any, if none is).
func (d *driver) pickInst(r *rand.Rand, not int) int {
	for range 8 {
		i := r.IntN(len(d.f.rs))
		if i != not && d.f.addr(i) != "" {
			return i
		}
	}
	return r.IntN(len(d.f.rs))
}

// daemon is a tenant's pyry: it keeps one binary connected, closes it now
// and then (normally, or by dropping the socket), and reconnects to a
// random instance; now and then a second daemon for the same server-id
// (a restart the balancer sends elsewhere) tries to claim it too.
func (d *driver) daemon(t *tenant, r *rand.Rand) {
	defer d.wg.Done()
	for !d.quiet.Load() {
		b := d.dial(t, Binary, d.pickInst(r, -1), false)
		if b == nil {
			if !d.sleep(dur(r, 200*time.Millisecond, 600*time.Millisecond)) {
				return
			}
			continue
		}
		life := time.NewTimer(dur(r, 3*time.Second, 12*time.Second))
		squat := time.NewTimer(dur(r, 2*time.Second, 25*time.Second))
	serve:
		for {
			select {
			case <-b.done:
				life.Stop()
				squat.Stop()
				if !d.sleep(dur(r, 200*time.Millisecond, 600*time.Millisecond)) {
					return
				}
				break serve
			case <-squat.C:
				d.squat(t, r, b.c.Inst)
			case <-life.C:
				if wait := b.pinned(); wait > 0 {
					life.Reset(wait) // a split brain in the making needs it
					continue
				}
				squat.Stop()
				code := codeNormal
				if r.IntN(6) == 0 {
					code = codeVanish
				}
				b.selfClose(code)
				if !d.sleep(dur(r, 0, d.cfg.Grace*3/2)) {
					return
				}
				break serve
			case <-d.quietC:
				return
			}
		}
	}
}

// squat dials a second binary for t on another instance than not and
// lets it live a few seconds (if the cluster lets it claim at all).
func (d *driver) squat(t *tenant, r *rand.Rand, not int) {
	b := d.dial(t, Binary, d.pickInst(r, not), true)
	if b == nil {
		return
	}
	d.closeAfter(b, dur(r, 2*time.Second, 5*time.Second))
}

// closeAfter closes cl normally after d, unless it ends first or the run
// quiesces (which closes everything itself).
func (d *driver) closeAfter(cl *client, after time.Duration) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		select {
		case <-cl.done:
		case <-time.After(after):
			cl.selfClose(codeNormal)
		case <-d.quietC:
		}
	}()
}

// phoneSlot keeps one phone of t connected to random instances: it joins,
// sends, leaves (normally, with an application code, or by dropping the
// socket) and joins again; a phone the relay closes comes back after a
// short back-off.
func (d *driver) phoneSlot(t *tenant, r *rand.Rand) {
	defer d.wg.Done()
	if !d.sleep(dur(r, 0, time.Second)) {
		return
	}
	for !d.quiet.Load() {
		p := d.dial(t, Phone, d.pickInst(r, -1), false)
		if p == nil {
			if !d.sleep(dur(r, 200*time.Millisecond, 600*time.Millisecond)) {
				return
			}
			continue
		}
		select {
		case <-p.done:
			if !d.sleep(dur(r, 100*time.Millisecond, 500*time.Millisecond)) {
				return
			}
		case <-time.After(dur(r, 2*time.Second, 15*time.Second)):
			code := codeNormal
			switch r.IntN(8) {
			case 0:
				code = 4000 + r.IntN(1000)
			case 1:
				code = codeVanish
			}
			p.selfClose(code)
			if !d.sleep(dur(r, 100*time.Millisecond, 800*time.Millisecond)) {
				return
			}
		case <-d.quietC:
			return
		}
	}
}

// dial opens a binary or phone for t on instance inst and starts its
// reader and sender; nil when the upgrade failed.
func (d *driver) dial(t *tenant, role Role, inst int, squatter bool) *client {
	addr := d.f.addr(inst)
	c := d.h.newConn(role, t.sid, inst, d.f.now())
	d.h.update(func() { c.Squatter = squatter })
	if addr == "" {
		d.h.update(func() { c.DialErr = "instance down" })
		return nil
	}
	h := http.Header{}
	h.Set("x-pyrycode-server", t.sid)
	path := "/v1/client"
	if role == Binary {
		path = "/v1/server"
		h.Set("x-pyrycode-version", "chaos")
		h.Set("user-agent", fmt.Sprintf("chaos/b%d", c.ID))
	} else {
		h.Set("x-pyrycode-token", "chaos")
		h.Set("user-agent", fmt.Sprintf("chaos/p%d", c.ID))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, addr+path, &websocket.DialOptions{HTTPHeader: h, HTTPClient: d.hc})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		d.h.update(func() { c.DialErr = err.Error() })
		return nil
	}
	ws.SetReadLimit(1 << 20)
	now := d.f.now()
	d.h.update(func() { c.Upgraded = now })
	cl := &client{d: d, t: t, c: c, ws: ws, done: make(chan struct{}), peers: map[string]*peer{}}
	t.mu.Lock()
	if role == Binary {
		t.bins[c.ID] = cl
	} else {
		t.phones[c.ID] = cl
	}
	t.mu.Unlock()
	d.wg.Add(2)
	go cl.read()
	go cl.sendLoop(d.rng())
	if role == Phone {
		cl.sendUp(0) // its first frame at once: the binary learns its conn_id
	}
	return cl
}

// selfClose closes the connection from the client's side: with code, or
// by dropping the socket (codeVanish).
func (cl *client) selfClose(code int) {
	// No frame is being written while the close starts, and none after:
	// a frame the harness counts as sent went out before the close.
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	now := cl.d.f.now()
	first := false
	cl.d.h.update(func() {
		if cl.c.SelfClose == 0 && cl.c.Ended == 0 {
			cl.c.SelfClose, cl.c.SelfCode = now, code
			first = true
		}
	})
	if !first {
		return
	}
	if code == codeVanish {
		_ = cl.ws.CloseNow()
		return
	}
	go func() { _ = cl.ws.Close(websocket.StatusCode(code), "") }()
}

// errClosing: the harness closed this client; it sends nothing more.
var errClosing = errors.New("chaos: client closing")

// closing reports whether the harness started closing cl (under wmu).
func (cl *client) closing() bool {
	var c bool
	cl.d.h.update(func() { c = cl.c.SelfClose != 0 })
	return c
}

// pinned is how long the binary is still pinned open.
func (cl *client) pinned() time.Duration {
	return time.Until(time.Unix(0, cl.pin.Load()))
}

// pause stops the reader (before its next read) for d.
func (cl *client) pause(d time.Duration) {
	cl.gateMu.Lock()
	g := make(chan struct{})
	cl.gate = g
	cl.gateMu.Unlock()
	time.AfterFunc(d, func() {
		cl.gateMu.Lock()
		if cl.gate == g {
			cl.gate = nil
		}
		cl.gateMu.Unlock()
		close(g)
	})
}

func (cl *client) waitGate() {
	cl.gateMu.Lock()
	g := cl.gate
	cl.gateMu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-cl.done:
		}
	}
}

// envelope is a binary's view of a message: a phone frame or a close
// notice.
type envelope struct {
	ConnID    string          `json:"conn_id"`
	Frame     json.RawMessage `json:"frame"`
	CloseCode int             `json:"close_code"`
}

func (cl *client) read() {
	defer cl.d.wg.Done()
	defer cl.t.forget(cl)
	defer close(cl.done)
	h, f := cl.d.h, cl.d.f
	for {
		cl.waitGate()
		_, data, err := cl.ws.Read(context.Background())
		now := f.now()
		if err != nil {
			code := int(websocket.CloseStatus(err))
			reason := ""
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				reason = ce.Reason
			}
			if code < 0 {
				code = codeAbnormal
			}
			h.update(func() { cl.c.Ended, cl.c.Code, cl.c.Reason = now, code, reason })
			return
		}
		if cl.c.Role == Phone {
			cl.record(Delivery{To: cl.c.ID, Recv: now, Size: len(data)}, data)
			continue
		}
		var env envelope
		if json.Unmarshal(data, &env) != nil {
			cl.record(Delivery{Up: true, To: cl.c.ID, Recv: now, Size: len(data)}, data)
			continue
		}
		if len(env.Frame) == 0 || string(env.Frame) == "null" {
			h.notice(Notice{Binary: cl.c.ID, ConnID: env.ConnID, Code: env.CloseCode, Recv: now})
			cl.wmu.Lock()
			delete(cl.peers, env.ConnID)
			cl.wmu.Unlock()
			continue
		}
		dv := cl.record(Delivery{Up: true, To: cl.c.ID, ConnID: env.ConnID, Recv: now, Size: len(env.Frame)}, env.Frame)
		if dv.Bad == "" && !dv.P.Forged {
			cl.wmu.Lock()
			if _, ok := cl.peers[env.ConnID]; !ok {
				cl.peers[env.ConnID] = &peer{phone: dv.P.Phone, seq: 0}
			}
			cl.wmu.Unlock()
		}
	}
}

// record parses a received frame and records the delivery (through the
// tamper hook of the checker's own tests).
func (cl *client) record(d Delivery, frame []byte) Delivery {
	if err := json.Unmarshal(frame, &d.P); err != nil || d.P.Tenant == "" {
		d.Bad = fmt.Sprintf("%.80q", frame)
	}
	ds := []Delivery{d}
	if tm := cl.d.cfg.Tamper; tm != nil {
		ds = tm(d)
	}
	for _, x := range ds {
		cl.d.h.delivered(x)
	}
	return d
}

func (t *tenant) forget(cl *client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.bins, cl.c.ID)
	delete(t.phones, cl.c.ID)
}

// pad is filler for a frame of about n bytes.
func pad(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat("x", n)
}

// sendUp sends a phone's next frame with n bytes of filler.
func (cl *client) sendUp(n int) error {
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	if cl.closing() {
		return errClosing
	}
	cl.seq++
	now := cl.d.f.now()
	p := Payload{Tenant: cl.t.sid, Phone: cl.c.ID, Seq: cl.seq, Sent: int64(now), Pad: pad(n)}
	b, _ := json.Marshal(p)
	cl.d.h.sent(streamKey{Up: true, Phone: cl.c.ID}, Sent{Seq: cl.seq, At: now, Size: len(b)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.ws.Write(ctx, websocket.MessageText, b)
}

// sendDown sends a binary's next frame to one phone (a close directive
// when directive != 0).
func (cl *client) sendDown(connID string, n, directive int) error {
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	if cl.closing() {
		return errClosing
	}
	pr, ok := cl.peers[connID]
	if !ok {
		return nil
	}
	pr.seq++
	now := cl.d.f.now()
	p := Payload{Tenant: cl.t.sid, Phone: pr.phone, Binary: cl.c.ID, Seq: pr.seq, Sent: int64(now), Pad: pad(n)}
	env := map[string]any{"conn_id": connID, "frame": p}
	if directive != 0 {
		env["close_code"] = directive
		delete(cl.peers, connID)
	}
	b, _ := json.Marshal(env)
	cl.d.h.sent(streamKey{Phone: pr.phone, Binary: cl.c.ID}, Sent{Seq: pr.seq, At: now, Size: len(b), Directive: directive})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return cl.ws.Write(ctx, websocket.MessageText, b)
}

// connIDs are the phones a binary knows.
func (cl *client) connIDs() []string {
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	out := make([]string, 0, len(cl.peers))
	for id := range cl.peers {
		out = append(out, id)
	}
	return out
}

// connIDOf is the conn_id a binary knows phone by, "" if none.
func (cl *client) connIDOf(phone int) string {
	cl.wmu.Lock()
	defer cl.wmu.Unlock()
	for id, p := range cl.peers {
		if p.phone == phone {
			return id
		}
	}
	return ""
}

// sendLoop sends a frame every 150-400 ms: a phone to its binary, a
// binary to each phone it knows (now and then a close directive instead).
func (cl *client) sendLoop(r *rand.Rand) {
	defer cl.d.wg.Done()
	for {
		select {
		case <-cl.done:
			return
		case <-cl.d.quietC:
			return
		case <-time.After(dur(r, 150*time.Millisecond, 400*time.Millisecond)):
		}
		if cl.c.Role == Phone {
			if cl.sendUp(r.IntN(300)) != nil {
				return
			}
			continue
		}
		for _, id := range cl.connIDs() {
			directive := 0
			if r.IntN(200) == 0 {
				directive = 4401
			}
			if cl.sendDown(id, r.IntN(300), directive) != nil {
				return
			}
		}
	}
}

// quiesce stops every actor from dialling and sending.
func (d *driver) quiesce() {
	if d.quiet.CompareAndSwap(false, true) {
		close(d.quietC)
	}
}

// live returns the tenants' live clients of a role.
func (d *driver) live(role Role) []*client {
	var out []*client
	for _, t := range d.tenants {
		t.mu.Lock()
		m := t.bins
		if role == Phone {
			m = t.phones
		}
		for _, c := range m {
			out = append(out, c)
		}
		t.mu.Unlock()
	}
	return out
}

// closeAll closes every live client of a role normally and waits (up to
// d) for them to end.
func (d *driver) closeAll(role Role, wait time.Duration) {
	cs := d.live(role)
	for _, c := range cs {
		c.selfClose(codeNormal)
	}
	deadline := time.Now().Add(wait)
	for _, c := range cs {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline)):
			_ = c.ws.CloseNow()
		}
	}
}
