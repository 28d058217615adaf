package attacks

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// Host mismatch: in TLS modes the relay answers only its own names. A
// client with the right SNI (so the handshake succeeds and the certificate
// verifies) but another Host header (another name, the relay's IP address,
// or look-alikes that pass a careless prefix, suffix or subdomain match)
// gets 421 with an empty body on the upgrade paths and /healthz: no
// upgrade, nothing registered. The right Host then carries a full
// binary<->phone exchange, so the check cannot pass by refusing everything.
func hostMismatch() Scenario {
	return Scenario{
		ID:      "ATK-HOST-MISMATCH",
		Title:   "Right SNI, wrong Host (other name, IP, look-alikes) gets 421 with an empty body; right Host relays",
		Threats: []string{"TM-HOST-1"},
		Mode:    RemoteSafe,
		TLSOnly: true,
		Bounds:  "about 20 sequential HTTPS requests, 4 WebSocket connections",
		BehindProxy: ProxyNote{TestsProxy, "behind a TLS-terminating proxy the relay listens in plain HTTP and answers any Host: " +
			"the 421s come from the proxy's virtual hosts (nginx: a default server answering 421); the relay's part is that nothing " +
			"registered and the right Host relays"},
		Run: runHostMismatch,
	}
}

func runHostMismatch(ctx context.Context, t *Target) Result {
	if skip := needHTTPS(t); skip != nil {
		return *skip
	}
	name := strings.ToLower(t.tlsName())
	right := t.vhost()

	// The address the relay is reached at, as a client would type it.
	c, err := t.dialRaw(ctx)
	if err != nil {
		return Failf("TLS dial %s (verifying %q): %v", t.hostPort(), name, err)
	}
	ip := c.RemoteAddr().(*net.TCPAddr).IP.String()
	_ = c.Close()

	wrong := []string{
		t.withPort("other.example.test"),
		t.withPort("attacker-" + name),         // ends with the name
		t.withPort(name + ".attacker.example"), // starts with the name
		t.withPort("sub." + name),              // a subdomain of the name
	}
	if ip != name {
		wrong = append(wrong, t.withPort(ip))
	}

	var before health
	if t.Local != nil {
		var st int
		if before, st, err = t.healthzAs(ctx, right); err != nil || st != 200 {
			return Failf("healthz with Host %q: status %d, %v", right, st, err)
		}
	}

	id := newServerID() // valid, never claimed with the right Host
	tok := canary("host")
	paths := []struct {
		name, method, path string
		headers            [][2]string
	}{
		{"binary upgrade", "GET", "/v1/server", append(wsUpgradeHeaders(), [2]string{hdrServerID, id}, [2]string{hdrVersion, "attacks-0"}, [2]string{"User-Agent", "relay-attacks/1"})},
		{"phone upgrade", "GET", "/v1/client", append(wsUpgradeHeaders(), [2]string{hdrServerID, id}, [2]string{hdrToken, tok}, [2]string{"User-Agent", "relay-attacks/1"})},
		{"healthz", "GET", "/healthz", nil},
	}
	n := 0
	for _, host := range wrong {
		for _, p := range paths {
			rr, err := t.rawRequest(ctx, requestWithHost(p.method, p.path, host, p.headers))
			if err != nil {
				return Failf("%s with Host %q: no HTTP response: %v", p.name, host, err)
			}
			if rr.Resp.StatusCode != 421 {
				return Failf("%s with right SNI %q and Host %q: status %d, want 421", p.name, name, host, rr.Resp.StatusCode)
			}
			if len(rr.Body) != 0 {
				return Failf("%s with Host %q: 421 body not empty: %q", p.name, host, tail(string(rr.Body), 80))
			}
			if rr.Resp.Header.Get("Upgrade") != "" || rr.Resp.Header.Get("Sec-WebSocket-Accept") != "" {
				return Failf("%s with Host %q: 421 carries upgrade headers", p.name, host)
			}
			h, _, _ := net.SplitHostPort(host)
			if leakOf(string(rr.All), tok) != "" || bytes.Contains(rr.All, []byte(id)) || (h != "" && h != ip && bytes.Contains(rr.All, []byte(h))) {
				return Failf("%s with Host %q: the 421 echoed the request", p.name, host)
			}
			n++
		}
	}

	// Nothing registered: locally the counts are unchanged, and (anywhere)
	// a phone with the right Host finds no binary on the server-id the
	// wrong-Host binary tried to claim.
	rt := t.withHost(right)
	if t.Local != nil {
		var after health
		ok := pollUntil(ctx, 3*time.Second, 50*time.Millisecond, func() bool {
			var st int
			after, st, err = t.healthzAs(ctx, right)
			return err == nil && st == 200 && after == before
		})
		if !ok {
			return Failf("registry counts changed after wrong-Host requests: before %+v, after %+v", before, after)
		}
	}
	pc, _, err := rt.dial(ctx, "/v1/client", phoneHeaders(id, "tok-"+randHex(8)))
	if err != nil {
		return Failf("phone dial with the right Host %q: %v", right, err)
	}
	if code := startReader(ctx, pc).closeCode(5 * time.Second); code != 4404 {
		_ = pc.CloseNow()
		return Failf("a wrong-Host binary claim registered: a phone on its server-id got close %d, want 4404", code)
	}

	// Positive control: the right Host carries a binary<->phone exchange.
	s, err := newSession(ctx, rt)
	if err != nil {
		return Failf("right Host %q: %v", right, err)
	}
	defer s.Close()
	ph, err := s.addPhone(nil)
	if err != nil {
		return Failf("right Host %q: %v", right, err)
	}
	if _, err := s.roundTrip(ph, 5*time.Second); err != nil {
		return Failf("right Host %q: %v", right, err)
	}
	return Passf("%d requests with SNI %q and Host %s: all 421, empty body, no upgrade, nothing echoed or registered; Host %q relayed a binary<->phone round trip",
		n, name, strings.Join(quoteAll(wrong), ", "), right)
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}
