package attacks

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/netip"
	"time"
)

// Simulated client addresses, for the admission-control scenarios
// (ATK-CONN-FLOOD, ATK-PER-IP-FLOOD, ATK-RETRY-STORM, ATK-QUEUE-CEILING,
// ATK-SPOOF-IP, ATK-SOCKET-FLOOD) and the load harness: connections from
// chosen loopback source addresses, with no retry on 429/503 (the refusal
// is what is being measured). The dialer and the upgrade are in target.go.

// srcAddr is the i-th simulated client address: 127.0.0.2, 127.0.0.3, …,
// 127.0.0.251, then 127.0.1.2, …. Every one is on loopback (127.0.0.0/8
// routes to lo), and none is 127.0.0.1, which scenarios keep for the
// "trusted proxy" peer.
func srcAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, byte(i / 250), byte(2 + i%250)})
}

// healthzFrom is GET /healthz from src (after preamble) on a fresh
// connection; it returns the status code. The request says Connection:
// close and the socket is read to EOF, so its slot at the relay is free
// when this returns.
func (t *Target) healthzFrom(ctx context.Context, src netip.Addr, preamble []byte) (int, error) {
	c, err := t.dialFrom(ctx, src, preamble)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(t.buildRequest("GET", "/healthz", nil)); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_, _ = io.Copy(io.Discard, br)
	return resp.StatusCode, nil
}

// holdBinary claims a fresh server-id over a raw socket from src and keeps
// it: the cheapest connection that counts against every cap.
func (t *Target) holdBinary(ctx context.Context, src netip.Addr) (upgrade, error) {
	return t.upgradeFrom(ctx, src, nil, "/v1/server", binaryHeaders(newServerID()))
}

// orphanPhoneHeaders are the upgrade headers of a phone to a server-id nobody holds: the
// relay accepts it and closes it 4404.
func orphanPhoneHeaders() http.Header { return phoneHeaders(newServerID(), "tok-"+randHex(8)) }

// closeAll closes every accepted upgrade in us.
func closeAll(us []upgrade) {
	for _, u := range us {
		u.Close()
	}
}
