// Package push sends the wakes binaries ask for (protocol §5, push_wake)
// as Firebase Cloud Messaging HTTP v1 data messages, off the routing core's
// hot path and within fixed bounds: a relay-wide cap on requests in flight,
// a token bucket per server-id, a per-request timeout and FCM's own
// Retry-After. A wake over any bound is dropped and counted, never queued.
//
// Every wake ends as exactly one Outcome, counted in
// relay_push_wakes_total{outcome}. The device token and the service-account
// key never reach a log line, a metric or an error text: a log line carries
// at most the token's fingerprint (Fingerprint).
//
// The request is built with net/http rather than the generated client of
// google.golang.org/api/fcm/v1: one fixed POST needs no client library, and
// google.golang.org/api would bring its transport stack (cloud.google.com/go/auth,
// OpenTelemetry instrumentation, gRPC in its module graph) into the supply
// chain (TM-SUP-1) for one request shape. Tokens come from golang.org/x/oauth2's
// google and jwt packages: no signing code of our own.
package push

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"
	"golang.org/x/time/rate"

	"github.com/pyrycode/relay/internal/metrics"
)

// Deps are the Sender's collaborators.
type Deps struct {
	Log     *slog.Logger     // nil discards
	Metrics *metrics.Metrics // nil creates a private set
	// Transport carries both the token and the FCM requests; nil uses a
	// clone of http.DefaultTransport (which honours HTTPS_PROXY).
	Transport http.RoundTripper
}

// Sender sends push wakes. Use New; Wake never blocks.
type Sender struct {
	opts     Options
	log      *slog.Logger
	outcomes map[Outcome]prometheus.Counter
	inFlight prometheus.Gauge

	// Set only when enabled.
	client  *http.Client
	tokens  *tokenCache
	sendURL string

	slots       chan struct{} // one per request in flight
	pausedUntil atomic.Int64  // unix nanos: FCM's Retry-After, relay-wide
	now         func() time.Time

	ctx    context.Context // ends at the shutdown deadline: aborts sends
	cancel context.CancelFunc
	wg     sync.WaitGroup // running sends and token fetches

	mu        sync.Mutex
	closed    bool
	buckets   map[string]*rate.Limiter
	lastSweep time.Time
}

// New checks the options and, when push is enabled, the credentials file
// (see loadCredentials); an error means the relay must refuse to start.
// Every outcome label is registered at zero.
func New(opts Options, d Deps) (*Sender, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	s := &Sender{opts: opts, log: d.Log, now: time.Now, buckets: make(map[string]*rate.Limiter)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	m := d.Metrics
	if m == nil {
		m = metrics.New()
	}
	s.outcomes = make(map[Outcome]prometheus.Counter, len(AllOutcomes))
	for _, o := range AllOutcomes {
		s.outcomes[o] = m.PushWakes.WithLabelValues(string(o))
	}
	s.inFlight = m.PushInFlight
	s.slots = make(chan struct{}, opts.MaxInFlight)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if !opts.Enabled() {
		return s, nil
	}
	creds, err := loadCredentials(opts.CredentialsFile, opts.Project)
	if err != nil {
		return nil, err
	}
	rt := d.Transport
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = opts.MaxInFlight
		rt = t
	}
	tokenClient := &http.Client{Transport: tokenTransport{ctx: s.ctx, timeout: opts.RequestTimeout, rt: rt}, CheckRedirect: refuseRedirect}
	tctx := context.WithValue(s.ctx, oauth2.HTTPClient, tokenClient)
	// A fresh jwt source per fetch: its own ReuseTokenSource would hand back
	// a token FCM refused (401) until expiry; tokenCache does the caching.
	fetch := tokenFunc(func() (*oauth2.Token, error) { return creds.jwt.TokenSource(tctx).Token() })
	s.tokens = &tokenCache{src: fetch, wg: &s.wg}
	s.client = &http.Client{Transport: rt, CheckRedirect: refuseRedirect}
	s.sendURL = opts.Endpoint + "/v1/projects/" + url.PathEscape(creds.project) + "/messages:send"
	// Said once at start, so an operator sees push is on and for which
	// project: the project id only, never a byte of the key.
	s.log.Info("push wakes on (FCM)", "event", "push_enabled", "fcm_project", creds.project)
	return s, nil
}

// refuseRedirect is both clients' redirect policy: none is followed.
// Neither Google endpoint redirects, and a 307 or 308 would resend the
// bearer token (FCM) or the signed assertion (token endpoint) wherever its
// Location points, plain http to any host included, past checkURL. The
// 3xx is returned as the answer, so the wake ends "failed".
func refuseRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Enabled reports whether wakes are sent (credentials configured).
func (s *Sender) Enabled() bool { return s.tokens != nil }

// Fingerprint is the only form of a device token that may be logged: the
// first 8 hex digits of its SHA-256. It joins lines about one token without
// letting a log reader use or recover it.
func Fingerprint(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:4])
}

// Wake asks for one wake of token on behalf of serverID's binary (the
// routing core's relay.Waker). It returns at once: the send, if any, runs
// on its own goroutine.
func (s *Sender) Wake(serverID, platform, token string) { s.TryWake(serverID, platform, token) }

// TryWake is Wake reporting the outcome when the wake ended without a send
// (dropped, disabled, invalid, paused), or "" when a send was started,
// whose outcome is counted when it ends.
func (s *Sender) TryWake(serverID, platform, token string) Outcome {
	if s.tokens == nil {
		return s.count(OutcomeDisabled)
	}
	if !validWake(platform, token) {
		return s.count(OutcomeInvalidToken)
	}
	now := s.now()
	if now.UnixNano() < s.pausedUntil.Load() {
		return s.count(OutcomeRateLimited)
	}
	select {
	case s.slots <- struct{}{}:
	default:
		return s.count(OutcomeDroppedInflight)
	}
	if o := s.admit(serverID, now); o != "" {
		<-s.slots
		return s.count(o)
	}
	s.inFlight.Inc()
	go s.send(serverID, token)
	return ""
}

// admit charges serverID's bucket and registers the send with the
// shutdown wait group. The in-flight slot is taken first, so a wake
// dropped for lack of slots costs its server-id no token.
func (s *Sender) admit(serverID string, now time.Time) Outcome {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return OutcomeDisabled
	}
	s.sweep(now)
	b := s.buckets[serverID]
	if b == nil {
		if len(s.buckets) >= s.opts.MaxServerIDs {
			return OutcomeDroppedRate
		}
		b = rate.NewLimiter(rate.Every(s.opts.Interval), s.opts.Burst)
		s.buckets[serverID] = b
	}
	if !b.AllowN(now, 1) {
		return OutcomeDroppedRate
	}
	s.wg.Add(1)
	return ""
}

// sweep forgets buckets that have refilled: a full bucket behaves exactly
// like a new one, so the table holds only server-ids that woke within the
// last Burst*Interval. It runs at most once per Interval.
func (s *Sender) sweep(now time.Time) {
	if now.Sub(s.lastSweep) < s.opts.Interval {
		return
	}
	s.lastSweep = now
	for id, b := range s.buckets {
		if b.TokensAt(now) >= float64(s.opts.Burst) {
			delete(s.buckets, id)
		}
	}
}

// send makes the FCM request, counts its outcome and frees the slot.
func (s *Sender) send(serverID, token string) {
	defer s.wg.Done()
	start := s.now()
	o, status := s.post(token)
	<-s.slots
	s.inFlight.Dec()
	s.count(o)
	level := slog.LevelDebug
	switch o {
	case OutcomeFailed, OutcomeRateLimited:
		level = slog.LevelWarn
	case OutcomeUnregistered, OutcomeInvalidToken:
		level = slog.LevelInfo
	}
	s.log.Log(context.Background(), level, "push wake", "event", "push_wake", "server_id", serverID,
		"outcome", string(o), "token_fp", Fingerprint(token), "http_status", status,
		"duration_ms", s.now().Sub(start).Milliseconds())
}

// post makes one request within RequestTimeout and classifies it. status
// is FCM's HTTP status, 0 when there was no answer.
func (s *Sender) post(token string) (Outcome, int) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.RequestTimeout)
	defer cancel()
	tok, err := s.tokens.get(ctx)
	if err != nil {
		return OutcomeFailed, 0
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.sendURL, bytes.NewReader(wakeBody(token)))
	if err != nil {
		return OutcomeFailed, 0
	}
	req.Header.Set("Content-Type", "application/json")
	tok.SetAuthHeader(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return OutcomeFailed, 0 // the error quotes the URL and maybe FCM: never logged
	}
	defer resp.Body.Close()
	o := classify(resp)
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		s.pause(retryAfter(resp.Header, s.now()))
	case http.StatusUnauthorized:
		s.tokens.invalidate(tok)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody)) // keep the connection reusable
	return o, resp.StatusCode
}

// pause stops every send relay-wide for d (FCM's Retry-After). A later,
// shorter Retry-After never shortens a running pause.
func (s *Sender) pause(d time.Duration) {
	until := s.now().Add(d).UnixNano()
	for {
		cur := s.pausedUntil.Load()
		if cur >= until || s.pausedUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

func (s *Sender) count(o Outcome) Outcome {
	s.outcomes[o].Inc()
	return o
}

// Shutdown stops taking wakes (later ones are "disabled") and waits for
// the sends in flight until ctx ends; then it aborts those left, which end
// as "failed", and waits for them to be counted.
func (s *Sender) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}
