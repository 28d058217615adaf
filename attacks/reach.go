package attacks

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Whether the target answers at all, asked before every scenario and after
// a failed one, so that a setup error (a relay that is down, a CA the
// suite was not given, a proxy with no upstream) is reported as "could not
// run" and never as a failed defence.
//
// The line between the two: a target that does not answer BEFORE a
// scenario was not attacked by it (could not run); a target that answered
// before a scenario, which then failed, and that does not answer after it
// was attacked and may have been taken down by the attack: that stays a
// finding, its evidence saying the target stopped answering. The next
// scenarios, finding it down, could not run.

// reachTimeout bounds one reachability probe: the TCP connect and the TLS
// handshake (dialTimeout each), the request, and Retry-After waits.
const reachTimeout = maxThrottleWait + 2*dialTimeout + 10*time.Second

// errUnreachable wraps every reason reachable gives: the target did not
// answer GET /healthz with an HTTP response of its own.
var errUnreachable = errors.New("target unreachable")

// reachable is one GET /healthz (with 429/503 waited out per Retry-After,
// as every request of the suite). Any HTTP answer counts as reachable except
// 502 and 504 (a proxy whose relay is gone) and a 503 that outlasts the
// waiting (a relay draining or full). The error says what to fix.
// With a peer instance (--peer-target) both must answer.
func (t *Target) reachable(ctx context.Context) error {
	if err := t.reachableOne(ctx); err != nil {
		return err
	}
	if t.Peer != nil {
		if err := t.Peer.reachableOne(ctx); err != nil {
			return fmt.Errorf("peer instance (--peer-target): %w", err)
		}
	}
	return nil
}

func (t *Target) reachableOne(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	rr, err := t.rawRequest(ctx, t.buildRequest("GET", "/healthz", nil))
	if err != nil {
		return fmt.Errorf("%w: %s: %v%s", errUnreachable, t.Base, err, reachHint(err))
	}
	switch code := rr.Resp.StatusCode; code {
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		return fmt.Errorf("%w: %s answered GET /healthz with %d: a proxy in front has no relay behind it", errUnreachable, t.Base, code)
	case http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s answered GET /healthz with 503 for %v: the relay is draining (shutting down) or full", errUnreachable, t.Base, maxThrottleWait)
	}
	return nil
}

// reachHint names the flag that fixes a TLS verification failure.
func reachHint(err error) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	switch {
	case errors.As(err, &ua):
		return " (the certificate's issuer is not trusted here: pass the relay's CA with --ca FILE)"
	case errors.As(err, &he):
		return " (the certificate does not name the target's host: pass the name it carries with --server-name NAME)"
	}
	return ""
}
