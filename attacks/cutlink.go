package attacks

import (
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
)

// CutLink is a TCP forwarder on loopback between one relay and its NATS
// server that a scenario or a cluster test can cut, blackhole and heal: a
// network partition of one instance, made from outside the process (the
// relay is a black box). Cut drops every connection through it and refuses
// new ones (accepted, then closed at once, as a partition's reset would);
// Blackhole holds every byte both ways without closing anything (a silent
// partition: no reset ever arrives); Heal lets connections through again,
// held bytes first, as TCP's retransmissions would deliver them.
type CutLink struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	flow  chan struct{} // closed while bytes flow; open while blackholed
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewCutLink forwards a loopback listener to natsURL (nats://127.0.0.1:N),
// which must be on loopback too.
func NewCutLink(natsURL string) (*CutLink, error) {
	u, err := url.Parse(natsURL)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		return nil, errors.New("cut link: NATS must be on a loopback address")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &CutLink{ln: ln, target: u.Host, flow: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(l.flow)
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// URL is the NATS URL to give the relay behind the link.
func (l *CutLink) URL() string { return "nats://" + l.ln.Addr().String() }

func (l *CutLink) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		cut := l.cut
		l.mu.Unlock()
		if cut {
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", l.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !l.track(c, up) {
			continue
		}
		l.wg.Add(2)
		var ends atomic.Int32
		go l.pipe(c, up, &ends)
		go l.pipe(up, c, &ends)
	}
}

// track registers both ends, unless the link was cut meanwhile.
func (l *CutLink) track(a, b net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cut {
		_ = a.Close()
		_ = b.Close()
		return false
	}
	l.conns[a], l.conns[b] = struct{}{}, struct{}{}
	return true
}

// pipe copies src to dst as TCP would deliver it: every byte src sent,
// then its end (a half-close), whatever happens to the other direction,
// so bytes held by a blackhole reach the far side after Heal even if
// their sender gave up meanwhile. The pair is closed when both directions
// have ended (ends counts them) or the link is cut.
func (l *CutLink) pipe(dst, src net.Conn, ends *atomic.Int32) {
	defer l.wg.Done()
	buf := make([]byte, 32<<10)
	eof := false
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.mu.Lock()
			flow := l.flow
			l.mu.Unlock()
			<-flow // blackholed: hold this chunk and stop reading
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			eof = errors.Is(err, io.EOF)
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok && eof {
		_ = tc.CloseWrite()
	}
	if ends.Add(1) < 2 {
		return
	}
	_ = dst.Close()
	_ = src.Close()
	l.mu.Lock()
	delete(l.conns, dst)
	delete(l.conns, src)
	l.mu.Unlock()
}

// Cut partitions the relay from NATS.
func (l *CutLink) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
	l.flowLocked()
	for c := range l.conns {
		_ = c.Close()
	}
}

// Blackhole partitions the relay from NATS silently: connections stay
// open and nothing crosses them until Heal or Cut.
func (l *CutLink) Blackhole() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.flow:
		l.flow = make(chan struct{})
	default: // already blackholed
	}
}

// Heal ends the partition: held bytes flow, and the relay's next
// reconnect gets through.
func (l *CutLink) Heal() {
	l.mu.Lock()
	l.cut = false
	l.flowLocked()
	l.mu.Unlock()
}

// flowLocked lets bytes flow again. Caller holds l.mu.
func (l *CutLink) flowLocked() {
	select {
	case <-l.flow:
	default:
		close(l.flow)
	}
}

// Close stops the forwarder and every connection through it.
func (l *CutLink) Close() {
	_ = l.ln.Close()
	l.Cut()
	l.wg.Wait()
}

// Conns is the number of connections through the link now (each counted
// once): whether the relay behind it is connected through this NATS node
// (the chaos harness learns which relays a node's loss disconnects).
func (l *CutLink) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns) / 2
}
