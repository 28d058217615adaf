package attacks

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	proxyproto "github.com/pires/go-proxyproto"
)

// Spoofed client address: the per-IP limits key on the address the relay
// can verify. From a peer outside --trust-proxy, X-Forwarded-For (and its
// cousins) change nothing: a client at its per-IP cap or out of upgrade
// tokens stays refused whatever address it claims, and a PROXY v2 header
// gets the connection dropped without an answer. From a trusted peer the
// PROXY header's source address is the client: exhausting the cap for one
// claimed address leaves another claimed address free, although every
// connection comes from the same socket address. Local-only: it starts
// relays with chosen trust settings.
//
// The spoofed addresses only ever appear inside headers; every connection
// is between loopback addresses.
const (
	spoofCap   = 4 // --max-conns-per-ip of the X-Forwarded-For relay
	spoofBurst = 8 // --upgrade-burst of the X-Forwarded-For relay
	spoofPCap  = 3 // --max-conns-per-ip of the PROXY relay
)

// spoofHeaders are the claims an untrusted client tries, one per attempt.
var spoofHeaders = [][2]string{
	{"X-Forwarded-For", "127.0.0.99"},
	{"X-Forwarded-For", "127.0.0.98, 127.0.0.97"},
	{"X-Real-IP", "127.0.0.96"},
	{"Forwarded", "for=127.0.0.95"},
}

func spoofIP() Scenario {
	return Scenario{
		ID:        "ATK-SPOOF-IP",
		Title:     "X-Forwarded-For and PROXY headers from untrusted peers change nothing; a trusted proxy's PROXY address is the one limited",
		Threats:   []string{"TM-NET-1"},
		Mode:      LocalOnly,
		LocalOnly: "it starts relays with chosen --trust-proxy and PROXY settings and small caps, and connects from simulated loopback addresses",
		Run:       runSpoofIP,
	}
}

func runSpoofIP(ctx context.Context, t *Target) Result {
	if _, skip := localOrSkip(t); skip != nil {
		return *skip
	}
	xff, err := spoofForwardedFor(ctx, t)
	if err != nil {
		return Failf("%v", err)
	}
	pp, err := spoofProxyHeader(ctx, t)
	if err != nil {
		return Failf("%v", err)
	}
	return Passf("%s; %s", xff, pp)
}

// spoofForwardedFor: a relay trusting nobody; clients at their cap and out
// of tokens claim other addresses in headers.
func spoofForwardedFor(ctx context.Context, t *Target) (string, error) {
	tgt, p, stop, err := dedicated(ctx, t, "--max-conns-per-ip", fmt.Sprint(spoofCap), "--upgrade-burst", fmt.Sprint(spoofBurst),
		"--upgrade-rate", "0.2")
	if err != nil {
		return "", err
	}
	defer stop()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return "", err
	}

	// At its per-IP cap, claiming another address.
	capped := srcAddr(0)
	var held []upgrade
	defer func() { closeAll(held) }()
	for len(held) < spoofCap {
		u, err := tgt.holdBinary(ctx, capped)
		if err != nil || u.Status != http.StatusSwitchingProtocols {
			return "", fmt.Errorf("connection %d of %s under its cap: status %d (%v)", len(held)+1, capped, u.Status, err)
		}
		held = append(held, u)
	}
	cap0, _ := m.value(ctx, mRejPerIP)
	for _, sh := range spoofHeaders[:3] {
		h := binaryHeaders(newServerID())
		h.Set(sh[0], sh[1])
		u, err := tgt.upgradeFrom(ctx, capped, nil, "/v1/server", h)
		if err != nil {
			return "", fmt.Errorf("%s at its cap with %s: %q: no answer (%v)", capped, sh[0], sh[1], err)
		}
		if u.Status != http.StatusTooManyRequests {
			u.Close()
			return "", fmt.Errorf("%s at its per-IP cap escaped it with %s: %q (answered %d): the header from an untrusted peer was believed", capped, sh[0], sh[1], u.Status)
		}
	}
	if cap1, err := m.value(ctx, mRejPerIP); err != nil || cap1-cap0 != 3 {
		return "", fmt.Errorf("relay counted %v per-IP-cap rejections for 3 refused spoofing attempts (%v)", cap1-cap0, err)
	}

	// Out of upgrade tokens, claiming another address.
	drained := srcAddr(1)
	for i := 0; i < spoofBurst; i++ {
		u, err := tgt.upgradeFrom(ctx, drained, nil, "/v1/client", orphanPhoneHeaders())
		if err != nil || u.Status != http.StatusSwitchingProtocols {
			return "", fmt.Errorf("upgrade %d of %s within its burst: status %d (%v)", i+1, drained, u.Status, err)
		}
		u.Close()
	}
	rate0, _ := m.value(ctx, mRejRate)
	for _, sh := range spoofHeaders {
		h := orphanPhoneHeaders()
		h.Set(sh[0], sh[1])
		u, err := tgt.upgradeFrom(ctx, drained, nil, "/v1/client", h)
		if err != nil {
			return "", fmt.Errorf("%s out of tokens with %s: %q: no answer (%v)", drained, sh[0], sh[1], err)
		}
		if u.Status != http.StatusTooManyRequests {
			u.Close()
			return "", fmt.Errorf("client address resolution (resolveClientIP in internal/admission/clientip.go): %s out of upgrade tokens sent %s: %q and was answered %d, want 429: the header from an untrusted peer was believed",
				drained, sh[0], sh[1], u.Status)
		}
		if u.retryAfterSecs() < 1 {
			// The address was not believed (429 under its own); what is
			// missing is the refusal's back-off hint, a different defence.
			return "", fmt.Errorf("Retry-After on refusals (Controller.Middleware in internal/admission/controller.go, TM-DOS-7): %s's 429 carried Retry-After %q, want whole seconds >= 1 (the spoofed %s was correctly ignored)",
				drained, u.RetryAfter, sh[0])
		}
	}
	if rate1, err := m.value(ctx, mRejRate); err != nil || rate1-rate0 != float64(len(spoofHeaders)) {
		return "", fmt.Errorf("relay counted %v rate-limit rejections for %d refused spoofing attempts (%v)", rate1-rate0, len(spoofHeaders), err)
	}
	return fmt.Sprintf("untrusted peer at its per-IP cap (%d) and out of tokens (burst %d): %d attempts with X-Forwarded-For/X-Real-IP/Forwarded all 429 under its own address",
		spoofCap, spoofBurst, 3+len(spoofHeaders)), nil
}

// spoofProxyHeader: a relay with --proxy-protocol trusting 127.0.0.1 only.
func spoofProxyHeader(ctx context.Context, t *Target) (string, error) {
	tgt, _, stop, err := dedicated(ctx, t, "--trust-proxy", "127.0.0.1/32", "--proxy-protocol", "--proxy-header-timeout", "2s",
		"--max-conns-per-ip", fmt.Sprint(spoofPCap), "--upgrade-burst", "50")
	if err != nil {
		return "", err
	}
	defer stop()
	relayAddr, err := net.ResolveTCPAddr("tcp", tgt.Base.Host)
	if err != nil {
		return "", err
	}
	header := func(src netip.Addr) ([]byte, error) {
		return proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: src.AsSlice(), Port: 40000}, relayAddr).Format()
	}
	proxyPeer := netip.MustParseAddr("127.0.0.1")
	claimA, claimB := netip.MustParseAddr("127.0.0.77"), netip.MustParseAddr("127.0.0.78")

	// An untrusted peer is served without a header...
	untrusted := srcAddr(2)
	if code, err := tgt.healthzFrom(ctx, untrusted, nil); err != nil || code != http.StatusOK {
		return "", fmt.Errorf("untrusted peer %s without a PROXY header: /healthz %d (%v), want 200", untrusted, code, err)
	}
	// ...and dropped, unanswered, when it sends one.
	hA, err := header(claimA)
	if err != nil {
		return "", err
	}
	u, err := tgt.upgradeFrom(ctx, untrusted, hA, "/v1/server", binaryHeaders(newServerID()))
	if err == nil {
		u.Close()
		return "", fmt.Errorf("untrusted peer %s sent a PROXY v2 header claiming %s and was answered %d: want the connection dropped", untrusted, claimA, u.Status)
	}

	// A trusted peer must send the header; with it, the claimed address is
	// the one the per-IP cap counts.
	if code, err := tgt.healthzFrom(ctx, proxyPeer, nil); err == nil {
		return "", fmt.Errorf("trusted peer without a PROXY header was answered %d: want the connection dropped", code)
	}
	var held []upgrade
	defer func() { closeAll(held) }()
	for len(held) < spoofPCap {
		u, err := tgt.upgradeFrom(ctx, proxyPeer, hA, "/v1/server", binaryHeaders(newServerID()))
		if err != nil || u.Status != http.StatusSwitchingProtocols {
			return "", fmt.Errorf("trusted proxy, connection %d for %s: status %d (%v)", len(held)+1, claimA, u.Status, err)
		}
		held = append(held, u)
	}
	u, err = tgt.upgradeFrom(ctx, proxyPeer, hA, "/v1/server", binaryHeaders(newServerID()))
	if err != nil {
		return "", fmt.Errorf("trusted proxy, connection %d for %s: no answer (%v); want 429", spoofPCap+1, claimA, err)
	}
	if u.Status != http.StatusTooManyRequests {
		u.Close()
		return "", fmt.Errorf("trusted proxy, connection %d for %s answered %d, want 429: the PROXY source address is not what the per-IP cap counts", spoofPCap+1, claimA, u.Status)
	}
	hB, err := header(claimB)
	if err != nil {
		return "", err
	}
	u, err = tgt.upgradeFrom(ctx, proxyPeer, hB, "/v1/server", binaryHeaders(newServerID()))
	if err != nil || u.Status != http.StatusSwitchingProtocols {
		return "", fmt.Errorf("trusted proxy, first connection for %s while %s is at its cap: status %d (%v); want 101 (the socket address was counted instead)", claimB, claimA, u.Status, err)
	}
	held = append(held, u)
	return fmt.Sprintf("--proxy-protocol: PROXY v2 from untrusted %s dropped unanswered (plain requests served), trusted peer without a header dropped; via trusted 127.0.0.1, %s capped at %d (429) while %s connected",
		untrusted, claimA, spoofPCap, claimB), nil
}
