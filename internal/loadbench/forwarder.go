// Package loadbench is the relay's load harness: it drives binaries and
// phones over loopback against a relay it starts (or a target URL) and, in
// the same invocation, against a baseline forwarder, and reports every
// figure as a ratio to the baseline. cmd/relay-bench is its command line.
package loadbench

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// The baseline forwarder: the cost of the wire alone. It speaks the same
// WebSocket library as the relay with the same accept options (no
// compression), and pairs two connections that carry the same x-bench-pair
// header, one on /v1/client (the phone) and one on /v1/server (the phone's
// leg of the binary). Every message is forwarded unchanged to the other
// connection: two hops like the relay's, with no envelope, no validation,
// no queue, no limits and no heartbeat. Each direction reads into a reused
// buffer and writes without a context timer, which is the least the library
// lets a forwarder do.

// HeaderPair names the pair a forwarder connection belongs to.
const HeaderPair = "X-Bench-Pair"

// Forwarder pairs and forwards connections.
type Forwarder struct {
	mu      sync.Mutex
	waiting map[string]*pending
}

type pending struct {
	role string
	c    *websocket.Conn
	peer chan *websocket.Conn
}

// NewForwarder returns an empty forwarder.
func NewForwarder() *Forwarder { return &Forwarder{waiting: make(map[string]*pending)} }

var forwarderAccept = &websocket.AcceptOptions{InsecureSkipVerify: true, CompressionMode: websocket.CompressionDisabled}

// ServeHTTP accepts one leg and forwards until either leg ends.
func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/memstats" {
		serveMemStats(w)
		return
	}
	id := r.Header.Get(HeaderPair)
	if id == "" || (r.URL.Path != "/v1/client" && r.URL.Path != "/v1/server") {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	c, err := websocket.Accept(w, r, forwarderAccept)
	if err != nil {
		return
	}
	c.SetReadLimit(-1)
	f.mu.Lock()
	p, ok := f.waiting[id]
	if ok && p.role != r.URL.Path {
		delete(f.waiting, id)
		f.mu.Unlock()
		p.peer <- c
		forward(c, p.c) // this leg's reader; the first leg reads the other way
		return
	}
	me := &pending{role: r.URL.Path, c: c, peer: make(chan *websocket.Conn, 1)}
	f.waiting[id] = me
	f.mu.Unlock()
	select {
	case other := <-me.peer:
		forward(c, other)
	case <-r.Context().Done():
	}
}

// forward copies messages from src to dst until one fails, then closes both.
func forward(src, dst *websocket.Conn) {
	defer dst.CloseNow()
	defer src.CloseNow()
	ctx := context.Background()
	buf := make([]byte, 0, 4096)
	for {
		typ, msg, err := readMessage(src, buf)
		if err != nil {
			return
		}
		buf = msg
		if dst.Write(ctx, typ, buf) != nil {
			return
		}
	}
}

// ServeForwarder runs a forwarder on addr until the process ends.
func ServeForwarder(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: NewForwarder(), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}
