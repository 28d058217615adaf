package attacks

import (
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
)

// cutLink is a TCP forwarder on loopback between one relay and its NATS
// server that a scenario can cut and heal: a network partition of one
// instance, made from outside the process (the relay is a black box). Cut
// drops every connection through it and refuses new ones (accepted, then
// closed at once, as a partition's reset would); Heal lets connections
// through again.
type cutLink struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// newCutLink forwards a loopback listener to natsURL (nats://127.0.0.1:N),
// which must be on loopback too.
func newCutLink(natsURL string) (*cutLink, error) {
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
	l := &cutLink{ln: ln, target: u.Host, conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// URL is the NATS URL to give the relay behind the link.
func (l *cutLink) URL() string { return "nats://" + l.ln.Addr().String() }

func (l *cutLink) accept() {
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
		go l.pipe(c, up)
		go l.pipe(up, c)
	}
}

// track registers both ends, unless the link was cut meanwhile.
func (l *cutLink) track(a, b net.Conn) bool {
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

func (l *cutLink) pipe(dst, src net.Conn) {
	defer l.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	l.mu.Lock()
	delete(l.conns, dst)
	delete(l.conns, src)
	l.mu.Unlock()
}

// Cut partitions the relay from NATS.
func (l *cutLink) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = true
	for c := range l.conns {
		_ = c.Close()
	}
}

// Heal ends the partition: the relay's next reconnect gets through.
func (l *cutLink) Heal() {
	l.mu.Lock()
	l.cut = false
	l.mu.Unlock()
}

// Close stops the forwarder and every connection through it.
func (l *cutLink) Close() {
	_ = l.ln.Close()
	l.Cut()
	l.wg.Wait()
}
