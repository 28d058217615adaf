package loadbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// target is a server the fleet dials: the relay or the forwarder.
type target struct {
	kind string // kindRelay or kindForwarder
	base string // ws://host:port
	pid  int    // 0 when the process is not ours (a remote relay)
}

const (
	kindRelay     = "relay"
	kindForwarder = "forwarder"
)

// pair is one phone and its way to and from the binary side.
type pair struct {
	idx   int
	phone *websocket.Conn
	// bin is the binary-side connection that reaches this phone: the
	// binary's own (shared by its phones) for the relay, the pair's
	// dedicated leg for the forwarder.
	bin    *websocket.Conn
	connID string // relay only
	// toPhone is the binary-side message that delivers frame to this phone.
	toPhone []byte
	sem     chan struct{} // in-flight bound of the streaming workloads
	reply   chan struct{} // ping-pong: the echo arrived
	ended   chan struct{} // the phone's reader returned
	hello   bool          // the phone's hello already reached the binary
}

// fleet is every connection of one run.
type fleet struct {
	t     target
	pairs []*pair
	all   []*websocket.Conn
	// h handles each message a phone or the binary side receives; a run
	// swaps in its own after set-up.
	h       atomic.Pointer[handlers]
	readers sync.WaitGroup
	closed  atomic.Bool
	// byConnID finds a pair from a relay envelope's conn_id.
	byConnID map[string]*pair
	mu       sync.Mutex
}

type handlers struct {
	onPhone  func(p *pair, msg []byte)
	onBinary func(bin *websocket.Conn, p *pair, msg []byte)
}

// dialer spreads connections over loopback source addresses 127.0.0.10 and
// up, so per-address limits (ephemeral ports, the relay's per-IP caps) are
// not what a large run measures. Loopback only: the harness never sends a
// byte elsewhere.
type dialer struct {
	clients []*http.Client
	next    *atomic.Uint64
	// pinged, when set, counts the pings every connection receives.
	pinged *atomic.Int64
}

// withPingCounter is d counting the pings its connections receive in n.
func (d *dialer) withPingCounter(n *atomic.Int64) *dialer {
	return &dialer{clients: d.clients, next: d.next, pinged: n}
}

func newDialer(addrs int) *dialer {
	d := &dialer{next: new(atomic.Uint64)}
	for i := range addrs {
		ip := net.IPv4(127, 0, byte(i/200), byte(10+i%200))
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
		d.clients = append(d.clients, &http.Client{Transport: &http.Transport{DialContext: nd.DialContext, DisableKeepAlives: true}})
	}
	return d
}

func (d *dialer) dial(ctx context.Context, url string, hdr http.Header) (*websocket.Conn, error) {
	hc := d.clients[int(d.next.Add(1))%len(d.clients)]
	opts := &websocket.DialOptions{HTTPClient: hc, HTTPHeader: hdr, CompressionMode: websocket.CompressionDisabled}
	if n := d.pinged; n != nil {
		opts.OnPingReceived = func(context.Context, []byte) bool { n.Add(1); return true }
	}
	c, resp, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	c.SetReadLimit(-1)
	return c, nil
}

func binaryHeader(serverID string) http.Header {
	return http.Header{"X-Pyrycode-Server": {serverID}, "X-Pyrycode-Version": {"bench"}, "User-Agent": {"relay-bench"}}
}

func phoneHeader(serverID string) http.Header {
	return http.Header{"X-Pyrycode-Server": {serverID}, "X-Pyrycode-Token": {"bench"}, "User-Agent": {"relay-bench"}, "X-Pyrycode-Device-Name": {"bench"}}
}

// newFleet connects binaries x phonesPer phone pairs to t (for the
// forwarder: as many pairs, each with its own binary-side leg) and learns
// every phone's conn_id. run names the server-ids so runs never collide.
func newFleet(ctx context.Context, d *dialer, t target, run string, binaries, phonesPer int) (*fleet, error) {
	f := &fleet{t: t, byConnID: make(map[string]*pair)}
	n := binaries * phonesPer
	f.pairs = make([]*pair, n)
	for i := range f.pairs {
		f.pairs[i] = &pair{idx: i, reply: make(chan struct{}, 1)}
	}
	// Setup: each binary side learns its phones from a hello frame.
	hello := make(chan struct{}, n)
	onBinary := func(bin *websocket.Conn, _ *pair, msg []byte) {
		var env struct {
			ConnID string `json:"conn_id"`
			Frame  struct {
				Hello *int `json:"hello"`
			} `json:"frame"`
		}
		if t.kind == kindForwarder {
			if json.Unmarshal(msg, &env.Frame) != nil || env.Frame.Hello == nil {
				return
			}
		} else if json.Unmarshal(msg, &env) != nil || env.Frame.Hello == nil {
			return
		}
		i := *env.Frame.Hello
		if i < 0 || i >= n {
			return
		}
		f.mu.Lock()
		f.pairs[i].connID = env.ConnID
		if env.ConnID != "" {
			f.byConnID[env.ConnID] = f.pairs[i]
		}
		f.mu.Unlock()
		hello <- struct{}{}
	}
	f.h.Store(&handlers{onPhone: func(*pair, []byte) {}, onBinary: onBinary})

	fail := func(err error) (*fleet, error) { f.close(); return nil, err }
	switch t.kind {
	case kindRelay:
		for b := range binaries {
			id := fmt.Sprintf("bench-%s-%d", run, b)
			bc, err := d.dial(ctx, t.base+"/v1/server", binaryHeader(id))
			if err != nil {
				return fail(err)
			}
			f.all = append(f.all, bc)
			f.startReader(bc, nil, false)
			for k := range phonesPer {
				p := f.pairs[b*phonesPer+k]
				p.bin = bc
				if k == 0 {
					// The binary's claim completes after its upgrade: a
					// phone that arrives first is closed 4404. Redial the
					// first phone until its hello reaches the binary.
					if err := f.joinFirst(ctx, d, p, id, hello); err != nil {
						return fail(err)
					}
					continue
				}
				pc, err := d.dial(ctx, t.base+"/v1/client", phoneHeader(id))
				if err != nil {
					return fail(err)
				}
				p.phone = pc
				f.all = append(f.all, pc)
				f.startReader(pc, p, true)
			}
		}
	case kindForwarder:
		for _, p := range f.pairs {
			h := http.Header{HeaderPair: {fmt.Sprintf("%s-%d", run, p.idx)}}
			pc, err := d.dial(ctx, t.base+"/v1/client", h)
			if err != nil {
				return fail(err)
			}
			bc, err := d.dial(ctx, t.base+"/v1/server", h)
			if err != nil {
				pc.CloseNow()
				return fail(err)
			}
			p.phone, p.bin = pc, bc
			f.all = append(f.all, pc, bc)
			f.startReader(pc, p, true)
			f.startReader(bc, p, false)
		}
	}
	sent := 0
	for _, p := range f.pairs {
		if p.hello {
			continue // joinFirst's, already arrived
		}
		if err := p.phone.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"hello":%d}`, p.idx)); err != nil {
			return fail(err)
		}
		sent++
	}
	for range sent {
		select {
		case <-hello:
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(10 * time.Second):
			return fail(errors.New("phones' hello frames did not all arrive"))
		}
	}
	return f, nil
}

// joinFirst connects p as its binary's first phone, redialling while the
// relay refuses it because the binary's claim has not completed yet.
func (f *fleet) joinFirst(ctx context.Context, d *dialer, p *pair, serverID string, hello chan struct{}) error {
	var last error
	for attempt := 0; attempt < 100; attempt++ {
		pc, err := d.dial(ctx, f.t.base+"/v1/client", phoneHeader(serverID))
		if err != nil {
			last = err
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.phone = pc
		p.ended = make(chan struct{})
		f.startReader(pc, p, true)
		if err := pc.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"hello":%d}`, p.idx)); err == nil {
			select {
			case <-hello:
				p.hello = true
				f.all = append(f.all, pc)
				return nil
			case <-p.ended:
				last = errors.New("first phone refused (binary not yet claimed)")
			case <-time.After(5 * time.Second):
				last = errors.New("first phone's hello never reached its binary")
			case <-ctx.Done():
				pc.CloseNow()
				return ctx.Err()
			}
		} else {
			last = err
		}
		pc.CloseNow()
		time.Sleep(10 * time.Millisecond)
	}
	return last
}

// setFrame prepares every pair's binary-to-phone message for frame.
func (f *fleet) setFrame(frame []byte) {
	for _, p := range f.pairs {
		if f.t.kind == kindRelay {
			p.toPhone = fmt.Appendf(nil, `{"conn_id":%q,"frame":%s}`, p.connID, frame)
		} else {
			p.toPhone = frame
		}
	}
}

// startReader reads c until it closes, handing each message to the
// fleet's handler. Messages are read into one reused buffer.
func (f *fleet) startReader(c *websocket.Conn, p *pair, phone bool) {
	f.readers.Add(1)
	var ended chan struct{}
	if p != nil && phone {
		ended = p.ended
	}
	go func() {
		defer f.readers.Done()
		if ended != nil {
			defer close(ended)
		}
		buf := make([]byte, 0, 1024)
		for {
			_, msg, err := readMessage(c, buf)
			if err != nil {
				return
			}
			buf = msg[:0]
			h := f.h.Load()
			if phone {
				h.onPhone(p, msg)
				continue
			}
			q := p
			if q == nil { // a relay binary: find the phone by conn_id
				q = f.lookup(msg)
			}
			h.onBinary(c, q, msg)
		}
	}()
}

// relayEnvelopePrefix is how the relay starts every envelope it sends a
// binary; the conn_id follows.
const relayEnvelopePrefix = `{"conn_id":"`

func (f *fleet) lookup(msg []byte) *pair {
	rest, ok := bytes.CutPrefix(msg, []byte(relayEnvelopePrefix))
	if !ok {
		return nil
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return nil
	}
	f.mu.Lock()
	p := f.byConnID[string(rest[:end])]
	f.mu.Unlock()
	return p
}

// readMessage reads one whole message into buf (grown as needed, reused
// across calls so a steady load allocates nothing per message).
func readMessage(c *websocket.Conn, buf []byte) (websocket.MessageType, []byte, error) {
	typ, r, err := c.Reader(context.Background())
	if err != nil {
		return 0, nil, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return typ, buf, nil
		}
		if err != nil {
			return 0, nil, err
		}
	}
}

// close drops every connection and waits for the readers.
func (f *fleet) close() {
	if !f.closed.CompareAndSwap(false, true) {
		return
	}
	var wg sync.WaitGroup
	for _, c := range f.all {
		wg.Add(1)
		go func() { defer wg.Done(); c.CloseNow() }()
	}
	wg.Wait()
	f.readers.Wait()
}

// frameOf returns a phone frame of exactly size bytes (at least 40): a
// noise_msg with base64-like data, the shape of real traffic.
func frameOf(size int) []byte {
	const head, tail = `{"v":2,"type":"noise_msg","data":"`, `"}`
	n := max(size-len(head)-len(tail), 0)
	return []byte(head + strings.Repeat("A", n) + tail)
}
