package attacks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"
)

// Socket flood: the HTTP-level caps (--max-conns, --max-conns-per-ip) count
// WebSockets only, so idle TCP sockets, trickled headers and keep-alive
// connections are capped a layer below, at accept, before a byte is read
// (--max-sockets-per-ip, --max-sockets). One address opens keep-alive
// connections that made one /healthz request and then idle sockets past its
// per-IP cap: exactly the excess is closed at once, without a byte, while
// its admitted sockets stay open and serve; another address still gets
// /healthz 200 and a binary<->phone pair connects and relays. Then sockets
// from many addresses, each under its per-IP cap, fill --max-sockets: the
// next socket, from an address that has done nothing, is closed at once,
// the pair keeps relaying, and closing the flood frees the listener.
//
// The relay's header timeout is raised to 30 s so that nothing but the
// socket caps can close a socket within the run. Local-only: it fills the
// relay.
const (
	sockFloodMax       = 48 // --max-sockets
	sockFloodPerIP     = 8  // --max-sockets-per-ip
	sockFloodKeepAlive = 2  // the attacker's keep-alive sockets (one /healthz each)
	sockFloodExtra     = 6  // the attacker's sockets over its per-IP cap
	sockFloodPerAddr   = 4  // sockets per address in the global fill (under the per-IP cap)
	// sockFloodClosed bounds "closed at once": a socket refused at accept
	// is closed within milliseconds; the header timeout is 30 s.
	sockFloodClosed = time.Second
	// sockFloodSettle is how long an admitted socket must stay open.
	sockFloodSettle = 300 * time.Millisecond
)

// Series of the socket caps' refusals.
const (
	mRejSocketPerIP = `relay_sockets_refused_total{reason="socket_per_ip_cap"}`
	mRejSocketCap   = `relay_sockets_refused_total{reason="socket_cap"}`
)

func socketFlood() Scenario {
	return Scenario{
		ID:        "ATK-SOCKET-FLOOD",
		Title:     "Idle and keep-alive sockets past --max-sockets-per-ip and --max-sockets are closed at accept; other clients and a live pair carry on",
		Threats:   []string{"TM-DOS-1", "TM-DOS-5"},
		Mode:      LocalOnly,
		LocalOnly: "it fills --max-sockets-per-ip and --max-sockets from simulated loopback addresses, on a relay of its own with small caps",
		Run:       runSocketFlood,
	}
}

// heldSock is an idle TCP socket with a goroutine that notes when the relay
// closes it and whether it ever sent a byte.
type heldSock struct {
	c      net.Conn
	closed chan struct{}
	got    atomic.Int64
}

func (t *Target) holdSocket(ctx context.Context, src netip.Addr) (*heldSock, error) {
	c, err := t.dialFrom(ctx, src, nil)
	if err != nil {
		return nil, err
	}
	s := &heldSock{c: c, closed: make(chan struct{})}
	go func() {
		defer close(s.closed)
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			s.got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	return s, nil
}

func (s *heldSock) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// closedWithin reports whether the relay closed s within d.
func (s *heldSock) closedWithin(d time.Duration) bool {
	select {
	case <-s.closed:
		return true
	case <-time.After(d):
		return s.isClosed()
	}
}

func closeSocks(ss []*heldSock) {
	for _, s := range ss {
		s.c.Close()
		<-s.closed
	}
}

// keepAlive is a socket that made /healthz requests with keep-alive.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

// get sends GET /healthz on the kept-alive connection and returns the status.
func (k *keepAlive) get(t *Target) (int, error) {
	_ = k.c.SetDeadline(time.Now().Add(5 * time.Second))
	defer k.c.SetDeadline(time.Time{})
	req := fmt.Sprintf("GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: relay-attacks/1\r\n\r\n", t.vhost())
	if _, err := k.c.Write([]byte(req)); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		return resp.StatusCode, errors.New("the relay ended the keep-alive connection")
	}
	return resp.StatusCode, nil
}

func runSocketFlood(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	tgt, p, stop, err := dedicated(ctx, t, "--max-sockets", fmt.Sprint(sockFloodMax), "--max-sockets-per-ip", fmt.Sprint(sockFloodPerIP),
		"--max-conns", "16", "--max-conns-per-ip", "4", "--read-header-timeout", "30s")
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("setup: %v", err)
	}
	rejected := func(series string) float64 { all, _ := m.scrape(ctx); return all[series] } // absent: none yet

	// Phase 1: one address past its per-IP socket cap.
	attacker := srcAddr(0)
	var kas []*keepAlive
	defer func() {
		for _, k := range kas {
			k.c.Close()
		}
	}()
	for i := 0; i < sockFloodKeepAlive; i++ {
		c, err := tgt.dialFrom(ctx, attacker, nil)
		if err != nil {
			return Failf("keep-alive socket from %s: %v", attacker, err)
		}
		k := &keepAlive{c: c, br: bufio.NewReader(c)}
		kas = append(kas, k)
		if code, err := k.get(tgt); err != nil || code != http.StatusOK {
			return Failf("keep-alive /healthz from %s: %d, %v", attacker, code, err)
		}
	}
	perIP0 := rejected(mRejSocketPerIP)
	var idle []*heldSock
	defer func() { closeSocks(idle) }()
	for i := 0; i < sockFloodPerIP-sockFloodKeepAlive+sockFloodExtra; i++ {
		s, err := tgt.holdSocket(ctx, attacker)
		if err != nil {
			return Failf("idle socket %d from %s: %v", i+1, attacker, err)
		}
		idle = append(idle, s)
	}
	// The excess is closed at once; the rest must still be open after that.
	pollUntil(ctx, sockFloodClosed, 10*time.Millisecond, func() bool { return countClosed(idle) >= sockFloodExtra })
	time.Sleep(sockFloodSettle)
	if n := countClosed(idle); n != sockFloodExtra {
		return Failf("%s holding %d keep-alive + %d idle sockets (--max-sockets-per-ip %d): %d closed within %v, want exactly the %d over the cap",
			attacker, sockFloodKeepAlive, len(idle), sockFloodPerIP, n, sockFloodClosed+sockFloodSettle, sockFloodExtra)
	}
	for _, s := range idle {
		if s.isClosed() && s.got.Load() != 0 {
			return Failf("a socket over the per-IP cap was sent %d bytes before its close: it was served, not refused at accept", s.got.Load())
		}
	}
	if d := rejected(mRejSocketPerIP) - perIP0; d != sockFloodExtra {
		return Failf("relay counted %v per-IP socket refusals for the %d sockets it closed", d, sockFloodExtra)
	}
	for i, k := range kas {
		if code, err := k.get(tgt); err != nil || code != http.StatusOK {
			return Failf("the attacker's admitted keep-alive socket %d stopped serving at its cap: %d, %v", i+1, code, err)
		}
	}
	if code, err := tgt.healthzFrom(ctx, srcAddr(1), nil); err != nil || code != http.StatusOK {
		return Failf("/healthz from %s while %s is at its socket cap: %d, %v", srcAddr(1), attacker, code, err)
	}
	s, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("legitimate pair while %s is at its socket cap: %v", attacker, err)
	}
	defer s.Close()
	ph, err := s.addPhone(nil)
	if err != nil {
		return Failf("legitimate pair while %s is at its socket cap: %v", attacker, err)
	}
	if _, err := s.roundTrip(ph, 3*time.Second); err != nil {
		return Failf("legitimate pair while %s is at its socket cap: %v", attacker, err)
	}

	// Phase 2: fill --max-sockets from many addresses, each under its cap.
	// Held now: the attacker's sockFloodPerIP and the pair's 2.
	held := sockFloodPerIP + 2
	var fill []*heldSock
	defer func() { closeSocks(fill) }()
	for i := 0; held+len(fill) < sockFloodMax; i++ {
		src := srcAddr(10 + i/sockFloodPerAddr)
		s, err := tgt.holdSocket(ctx, src)
		if err != nil {
			return Failf("fill socket %d from %s: %v", len(fill)+1, src, err)
		}
		fill = append(fill, s)
	}
	addrs := (len(fill) + sockFloodPerAddr - 1) / sockFloodPerAddr
	time.Sleep(sockFloodSettle)
	if n := countClosed(fill); n != 0 {
		return Failf("%d of %d fill sockets (from %d addresses, %d each) closed before --max-sockets %d was reached", n, len(fill), addrs, sockFloodPerAddr, sockFloodMax)
	}
	cap0 := rejected(mRejSocketCap)
	fresh := srcAddr(200)
	over, err := tgt.holdSocket(ctx, fresh)
	if err != nil {
		return Failf("socket over --max-sockets from %s: %v", fresh, err)
	}
	defer closeSocks([]*heldSock{over})
	if !over.closedWithin(sockFloodClosed) {
		return Failf("with %d sockets held (--max-sockets %d), a new socket from fresh address %s was still open after %v", sockFloodMax, sockFloodMax, fresh, sockFloodClosed)
	}
	if over.got.Load() != 0 {
		return Failf("the socket over --max-sockets was sent %d bytes before its close", over.got.Load())
	}
	if code, err := tgt.healthzFrom(ctx, srcAddr(201), nil); err == nil {
		return Failf("with the listener full, /healthz from fresh address %s was answered %d", srcAddr(201), code)
	}
	if d := rejected(mRejSocketCap) - cap0; d < 2 {
		return Failf("relay counted %v global socket refusals for the 2 sockets it closed at the cap", d)
	}
	var worst time.Duration
	for i := 0; i < 5; i++ {
		rtt, err := s.roundTrip(ph, 3*time.Second)
		if err != nil {
			return Failf("legitimate pair stopped relaying with the listener full: %v", err)
		}
		worst = max(worst, rtt)
	}

	// Closing the flood frees the listener.
	closeSocks(fill)
	if !pollUntil(ctx, 3*time.Second, 20*time.Millisecond, func() bool {
		code, err := tgt.healthzFrom(ctx, srcAddr(202), nil)
		return err == nil && code == http.StatusOK
	}) {
		return Failf("after the flood's sockets closed, /healthz from a fresh address was still refused")
	}
	return Passf("%s: %d keep-alive + %d idle sockets, the %d over --max-sockets-per-ip %d closed at accept without a byte (counted), the rest kept serving; /healthz from another address 200 and a pair connected and relayed; %d sockets from %d more addresses filled --max-sockets %d: new sockets from fresh addresses closed at once (counted), the pair relayed (worst %v); once the flood closed, /healthz 200 again",
		attacker, sockFloodKeepAlive, len(idle), sockFloodExtra, sockFloodPerIP, len(fill), addrs, sockFloodMax, ms(worst))
}

func countClosed(ss []*heldSock) int {
	n := 0
	for _, s := range ss {
		if s.isClosed() {
			n++
		}
	}
	return n
}
