package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNATSPayloadTooSmall is returned by Start when the NATS server accepts
// smaller messages (its max_payload) than a cross-instance frame can need
// (Options.MaxLinkPayload): every frame over it would close its phone 1011,
// so the relay refuses to start instead (exit 2), naming both numbers.
var ErrNATSPayloadTooSmall = errors.New("cluster: NATS max_payload is smaller than a cross-instance frame can be")

// payloadFits checks a server's max_payload (0: not known yet) against
// need (0: unchecked).
func payloadFits(maxPayload, need int64) error {
	if maxPayload <= 0 || need <= 0 || maxPayload >= need {
		return nil
	}
	return fmt.Errorf("%w: NATS accepts %d bytes, a link message may be %d (--max-message-bytes plus the link header, plus --max-header-bytes with --forward-v1-token); lower --max-message-bytes or raise max_payload on every NATS server",
		ErrNATSPayloadTooSmall, maxPayload, need)
}

// ErrNATSRefused: NATS and this instance do not trust each other. The
// server's certificate does not verify against --cluster-nats-ca (or the
// system roots), TLS is wanted (tls:// or --cluster-nats-ca) and the server
// offers none, or the server refuses the credentials. Unlike an unreachable
// NATS, which the relay waits for while serving same-instance pairs, this
// is configuration, and retrying cannot fix it: the relay refuses to start
// (exit 2) with one line naming the reason. The same refusal on a
// reconnect, later, is logged (event cluster_nats_refused) and retried: the
// other side may be fixed without restarting the fleet.
var ErrNATSRefused = errors.New("cluster: NATS refused the connection")

// Refusal reasons (the log's reason field, a closed set).
const (
	refusedTLSUnverified  = "tls_unverified"  // the server's certificate does not verify
	refusedTLSUnavailable = "tls_unavailable" // TLS wanted, the server offers none
	refusedAuthorization  = "authorization"   // credentials missing, unknown or expired
	natsPermissions       = "permissions"     // a publish or subscribe outside this user's permissions
	natsOther             = "other"
)

// authOptions are the options that decide whom this instance trusts and
// who it is: the CA (which requires TLS) and the credentials.
func (o Options) authOptions() []nats.Option {
	var opts []nats.Option
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	return opts
}

// preflight connects once, without retrying, to tell a refusal (a
// configuration error: ErrNATSRefused) from a NATS that is merely not
// reachable yet (nil: the caller's connection keeps retrying). Connected,
// it checks the server's max_payload and that no live instance answers as
// this one (ErrDuplicateInstance).
func preflight(o Options) error {
	opts := append(o.authOptions(), nats.NoReconnect(), nats.Timeout(requestTimeout), nats.CustomInboxPrefix(inboxPrefix(o.Name, o.InstanceID)))
	nc, err := nats.Connect(strings.Join(o.URLs, ","), opts...)
	if err == nil {
		defer nc.Close()
		if err := serverVersionOK(nc.ConnectedServerVersion()); err != nil {
			return err
		}
		if err := payloadFits(nc.MaxPayload(), o.MaxLinkPayload); err != nil {
			return err
		}
		return duplicateAtStart(nc, subjects{o.Name, o.InstanceID})
	}
	if r := refusalReason(err); r != "" {
		return fmt.Errorf("%w (%s): %v", ErrNATSRefused, r, err)
	}
	return nil
}

// refusalReason classifies a connection error as a refusal, or "" when it
// is not one (unreachable, timeout).
func refusalReason(err error) string {
	if err == nil {
		return ""
	}
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return refusedTLSUnverified
	case errors.Is(err, nats.ErrSecureConnWanted):
		return refusedTLSUnavailable
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		errors.Is(err, nats.ErrAccountAuthExpired), errors.Is(err, nats.ErrNkeysNotSupported):
		return refusedAuthorization
	}
	// nats.go reports some server -ERR lines as text only.
	if s := strings.ToLower(err.Error()); strings.Contains(s, "authorization violation") || strings.Contains(s, "authentication") {
		return refusedAuthorization
	}
	return ""
}

// natsErrorReason names an asynchronous NATS error for the log.
func natsErrorReason(err error) string {
	if errors.Is(err, nats.ErrPermissionViolation) {
		return natsPermissions
	}
	if r := refusalReason(err); r != "" {
		return r
	}
	return natsOther
}

// watchRefusals logs why NATS refuses this instance while it reconnects:
// nats.go reports a TLS or authorization failure of a reconnect through
// no callback, only as the connection's last error.
func (c *Cluster) watchRefusals() {
	defer c.loopsDone.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if c.nc.IsConnected() {
			continue
		}
		if r := refusalReason(c.nc.LastError()); r != "" && c.refusals.changed(r) {
			c.log.Warn("NATS refused this instance (TLS or credentials); retrying", "event", "cluster_nats_refused", "reason", r)
		}
	}
}

// refusalLog logs a reconnect's refusal once per change of reason, not at
// every retry (every 250 ms).
type refusalLog struct {
	mu   sync.Mutex
	last string
	at   time.Time
}

// changed reports whether reason differs from the last one logged, or the
// last was logged over a minute ago.
func (r *refusalLog) changed(reason string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if reason == r.last && time.Since(r.at) < time.Minute {
		return false
	}
	r.last, r.at = reason, time.Now()
	return true
}
