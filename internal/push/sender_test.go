package push

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/fcmtest"
	"github.com/pyrycode/relay/internal/logging"
	"github.com/pyrycode/relay/internal/metrics"
)

// rig is a Sender wired to a fake token endpoint and a fake FCM.
type rig struct {
	t    *testing.T
	fake *fcmtest.Server
	s    *Sender
	m    *metrics.Metrics
	log  *syncBuffer
	mu   sync.Mutex
	skew time.Duration
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func newRig(t *testing.T, mutate func(*Options)) *rig {
	t.Helper()
	fake := fcmtest.New(t)
	return newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), mutate)
}

func newRigWith(t *testing.T, fake *fcmtest.Server, creds string, mutate func(*Options)) *rig {
	t.Helper()
	o := Defaults()
	o.CredentialsFile = creds
	o.Endpoint = fake.Endpoint()
	if mutate != nil {
		mutate(&o)
	}
	r := &rig{t: t, fake: fake, m: metrics.New(), log: &syncBuffer{}}
	s, err := New(o, Deps{Log: logging.New(r.log, -8), Metrics: r.m})
	require.NoError(t, err)
	s.now = r.clock
	r.s = s
	t.Cleanup(func() {
		fake.Release()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, s.Shutdown(ctx))
		require.Zero(t, testutil.ToFloat64(r.m.PushInFlight), "in-flight gauge back to zero")
		require.Zero(t, len(s.slots), "every in-flight slot released")
	})
	return r
}

// clock is the Sender's time: real time plus what advance added, so that
// HTTP timeouts stay real while buckets and Retry-After can be skipped.
func (r *rig) clock() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().Add(r.skew)
}

func (r *rig) advance(d time.Duration) {
	r.mu.Lock()
	r.skew += d
	r.mu.Unlock()
}

func (r *rig) count(o Outcome) int {
	return int(testutil.ToFloat64(r.m.PushWakes.WithLabelValues(string(o))))
}

// counts returns every outcome's count (zeros included).
func (r *rig) counts() map[Outcome]int {
	out := map[Outcome]int{}
	for _, o := range AllOutcomes {
		out[o] = r.count(o)
	}
	return out
}

// settle waits until every started send is counted.
func (r *rig) settle(total int) {
	r.t.Helper()
	require.Eventually(r.t, func() bool {
		n := 0
		for _, c := range r.counts() {
			n += c
		}
		return n == total
	}, 5*time.Second, 5*time.Millisecond, "outcomes %v, want %d in all", r.counts(), total)
}

func TestWake_OneWakeIsExactlyOneSignedWellShapedFCMRequest(t *testing.T) {
	r := newRig(t, nil)
	require.Equal(t, Outcome(""), r.s.TryWake("server-a", "fcm", "device-token-1"))
	r.settle(1)
	reqs := r.fake.Requests()
	require.Len(t, reqs, 1)
	require.Empty(t, reqs[0].Problem)
	require.Equal(t, "device-token-1", reqs[0].DeviceToken)
	require.Equal(t, 1, r.fake.TokenRequests(), "one assertion, verified against the service account's public key")
	require.Empty(t, r.fake.Rejected())
	require.Equal(t, 1, r.count(OutcomeSent))
}

func TestWake_UntrustedKeyGetsNoAccessTokenAndSendsNothing(t *testing.T) {
	fake := fcmtest.New(t)
	creds := fake.WriteCredentials(t, t.TempDir(), fcmtest.NewKey(t)) // signed by a key the endpoint does not trust
	r := newRigWith(t, fake, creds, nil)
	r.s.Wake("server-a", "fcm", "device-token-1")
	r.settle(1)
	require.Equal(t, 1, r.count(OutcomeFailed))
	require.Equal(t, []string{"bad signature"}, fake.Rejected())
	require.Empty(t, fake.Requests(), "no FCM request without an access token")
}

func TestWake_EveryFCMAnswerCountedAsItsOutcome(t *testing.T) {
	cases := []struct {
		token string
		want  Outcome
	}{
		{"ok-token", OutcomeSent},
		{fcmtest.TokenUnregistered + "-x", OutcomeUnregistered},
		{fcmtest.TokenInvalid + "-x", OutcomeInvalidToken},
		{fcmtest.TokenRateLimited + "-x", OutcomeRateLimited},
		{fcmtest.TokenUnavailable + "-x", OutcomeRateLimited},
		{fcmtest.TokenServerError + "-x", OutcomeFailed},
		{fcmtest.TokenHang + "-x", OutcomeFailed}, // the per-request timeout
	}
	for _, c := range cases {
		t.Run(c.token, func(t *testing.T) {
			r := newRig(t, func(o *Options) {
				if strings.HasPrefix(c.token, fcmtest.TokenHang) {
					o.RequestTimeout = 300 * time.Millisecond // only the hang needs to meet it
				}
			})
			r.s.Wake("server-a", "fcm", c.token)
			r.settle(1)
			want := map[Outcome]int{}
			for _, o := range AllOutcomes {
				want[o] = 0
			}
			want[c.want] = 1
			require.Equal(t, want, r.counts())
			require.Len(t, r.fake.Requests(), 1)
			require.Empty(t, r.fake.Requests()[0].Problem)
		})
	}
}

func TestWake_UnregisteredNeedsFCMsErrorCode(t *testing.T) {
	// A 404 without FcmError UNREGISTERED (a wrong project, say) is not the
	// token's fault: "failed", so a daemon is never told to forget a token
	// because of the relay's configuration.
	fake := fcmtest.New(t)
	r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), func(o *Options) { o.Project = "some-other-project" })
	r.s.Wake("server-a", "fcm", fcmtest.TokenUnregistered)
	r.settle(1)
	require.Equal(t, 1, r.count(OutcomeFailed))
	require.Equal(t, 0, r.count(OutcomeUnregistered))
}

func TestWake_AccessTokenCachedAcrossWakes(t *testing.T) {
	r := newRig(t, nil)
	for i := range 5 {
		r.s.Wake("server-"+string(rune('a'+i)), "fcm", "tok")
		r.settle(i + 1) // sequential, so each wake finds the cache as the last left it
	}
	require.Equal(t, 5, r.count(OutcomeSent))
	require.Len(t, r.fake.Requests(), 5)
	require.Equal(t, 1, r.fake.TokenRequests(), "one access token for five wakes")
}

func TestWake_ExpiringAccessTokenRefreshed(t *testing.T) {
	fake := fcmtest.New(t)
	fake.ExpiresIn = 5 // inside oauth2's 10 s expiry margin: stale as soon as issued
	r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), nil)
	for i := range 3 {
		r.s.Wake("server-a", "fcm", "tok")
		r.settle(i + 1)
	}
	require.Equal(t, 3, r.count(OutcomeSent))
	require.Equal(t, 3, fake.TokenRequests(), "a token about to expire is fetched anew")
}

func TestWake_AccessTokenRefusedByFCMIsFetchedAnew(t *testing.T) {
	r := newRig(t, nil)
	r.s.Wake("server-a", "fcm", fcmtest.TokenRevoke)
	r.settle(1)
	require.Equal(t, 1, r.count(OutcomeFailed), "401")
	r.s.Wake("server-a", "fcm", "ok")
	r.settle(2)
	require.Equal(t, 1, r.count(OutcomeSent), "the next wake carries a new access token")
	require.Equal(t, 2, r.fake.TokenRequests())
	reqs := r.fake.Requests()
	require.Len(t, reqs, 2)
	require.Empty(t, reqs[1].Problem)
	require.NotEqual(t, reqs[0].Bearer, reqs[1].Bearer)
}

func TestWake_ConcurrentWakesShareOneTokenFetch(t *testing.T) {
	r := newRig(t, nil)
	for i := range 8 {
		r.s.Wake("server-"+string(rune('a'+i)), "fcm", "tok")
	}
	r.settle(8)
	require.Equal(t, 8, r.count(OutcomeSent))
	require.Equal(t, 1, r.fake.TokenRequests())
}

func TestWake_RetryAfterPausesEveryServerID(t *testing.T) {
	r := newRig(t, nil)
	r.s.Wake("server-a", "fcm", fcmtest.TokenRateLimited)
	r.settle(1)
	require.Equal(t, OutcomeRateLimited, r.s.TryWake("server-b", "fcm", "ok"), "another tenant is paused too: Retry-After is relay-wide")
	r.advance(fcmtest.RetryAfter - time.Second)
	require.Equal(t, OutcomeRateLimited, r.s.TryWake("server-c", "fcm", "ok"))
	require.Len(t, r.fake.Requests(), 1, "nothing reaches FCM during its Retry-After")
	r.advance(2 * time.Second)
	require.Equal(t, Outcome(""), r.s.TryWake("server-b", "fcm", "ok"))
	r.settle(4)
	require.Equal(t, 1, r.count(OutcomeSent))
	require.Equal(t, 3, r.count(OutcomeRateLimited))
}

func TestWake_InFlightCapDropsAndNeverQueues(t *testing.T) {
	r := newRig(t, func(o *Options) { o.MaxInFlight = 2 })
	r.s.Wake("server-a", "fcm", fcmtest.TokenHang+"-1")
	r.s.Wake("server-b", "fcm", fcmtest.TokenHang+"-2")
	require.Eventually(t, func() bool { return r.fake.InFlight() == 2 }, 5*time.Second, 5*time.Millisecond)
	start := time.Now()
	require.Equal(t, OutcomeDroppedInflight, r.s.TryWake("server-c", "fcm", "ok"))
	require.Less(t, time.Since(start), time.Second, "a wake over the cap returns at once")
	require.Equal(t, 2.0, testutil.ToFloat64(r.m.PushInFlight))
	r.fake.Release()
	r.settle(3)
	require.Equal(t, 2, r.count(OutcomeSent))
	require.Len(t, r.fake.Requests(), 2, "the dropped wake was never sent later")
	require.Zero(t, testutil.ToFloat64(r.m.PushInFlight))
	// Slots are back: the next wake goes through, and server-c's bucket was
	// not charged for its dropped wake.
	for i := range DefaultBurst {
		require.Equal(t, Outcome(""), r.s.TryWake("server-c", "fcm", "ok"))
		r.settle(3 + i + 1)
	}
}

func TestWake_PerServerIDBucket(t *testing.T) {
	r := newRig(t, func(o *Options) { o.Burst = 3; o.Interval = 10 * time.Second })
	for range 3 {
		require.Equal(t, Outcome(""), r.s.TryWake("server-a", "fcm", "ok"))
	}
	require.Equal(t, OutcomeDroppedRate, r.s.TryWake("server-a", "fcm", "ok"))
	require.Equal(t, Outcome(""), r.s.TryWake("server-b", "fcm", "ok"), "another server-id has its own bucket")
	r.advance(9 * time.Second)
	require.Equal(t, OutcomeDroppedRate, r.s.TryWake("server-a", "fcm", "ok"))
	r.advance(2 * time.Second)
	require.Equal(t, Outcome(""), r.s.TryWake("server-a", "fcm", "ok"), "one wake per interval after the burst")
	require.Equal(t, OutcomeDroppedRate, r.s.TryWake("server-a", "fcm", "ok"))
	r.settle(8)
	require.Equal(t, 5, r.count(OutcomeSent))
	require.Equal(t, 3, r.count(OutcomeDroppedRate))
	require.Len(t, r.fake.Requests(), 5)
}

func TestWake_BucketTableBoundedAndSwept(t *testing.T) {
	r := newRig(t, func(o *Options) { o.MaxServerIDs = 2; o.Burst = 1; o.Interval = time.Second })
	require.Equal(t, Outcome(""), r.s.TryWake("server-a", "fcm", "ok"))
	require.Equal(t, Outcome(""), r.s.TryWake("server-b", "fcm", "ok"))
	require.Equal(t, OutcomeDroppedRate, r.s.TryWake("server-c", "fcm", "ok"), "table full")
	r.advance(2 * time.Second) // a's and b's buckets refill and are forgotten
	require.Equal(t, Outcome(""), r.s.TryWake("server-c", "fcm", "ok"))
	r.s.mu.Lock()
	n := len(r.s.buckets)
	r.s.mu.Unlock()
	require.Equal(t, 1, n, "full buckets are swept")
	r.settle(4)
}

func TestWake_NotAnFCMWakeIsInvalidAndNeverSent(t *testing.T) {
	r := newRig(t, nil)
	for _, w := range [][2]string{
		{"apns", "tok"}, {"FCM", "tok"}, {"fcm", "tok with space"}, {"fcm", "tok\n"},
		{"fcm", "tök"}, {"fcm", strings.Repeat("t", MaxTokenBytes+1)}, {"fcm", ""},
	} {
		require.Equal(t, OutcomeInvalidToken, r.s.TryWake("server-a", w[0], w[1]))
	}
	require.Equal(t, Outcome(""), r.s.TryWake("server-a", "fcm", strings.Repeat("t", MaxTokenBytes)))
	r.settle(8)
	require.Len(t, r.fake.Requests(), 1)
}

func TestWake_DisabledWithoutCredentials(t *testing.T) {
	m := metrics.New()
	s, err := New(Defaults(), Deps{Metrics: m})
	require.NoError(t, err)
	require.False(t, s.Enabled())
	require.Equal(t, OutcomeDisabled, s.TryWake("server-a", "fcm", "tok"))
	require.Equal(t, 1.0, testutil.ToFloat64(m.PushWakes.WithLabelValues(string(OutcomeDisabled))))
	for _, o := range AllOutcomes { // pre-registered: every label is exported at zero
		require.Equal(t, 1, testutil.CollectAndCount(m.PushWakes.WithLabelValues(string(o))))
	}
	require.NoError(t, s.Shutdown(context.Background()))
}

func TestShutdown_WaitsForInFlightUpToTheDeadline(t *testing.T) {
	r := newRig(t, nil)
	r.s.Wake("server-a", "fcm", fcmtest.TokenHang)
	require.Eventually(t, func() bool { return r.fake.InFlight() == 1 }, 5*time.Second, 5*time.Millisecond)

	// Released before the deadline: the send completes and is counted.
	go func() { time.Sleep(50 * time.Millisecond); r.fake.Release() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, r.s.Shutdown(ctx))
	require.Equal(t, 1, r.count(OutcomeSent))
	require.Equal(t, OutcomeDisabled, r.s.TryWake("server-a", "fcm", "ok"), "no wake after shutdown")
}

func TestShutdown_DeadlineAbortsHangingSends(t *testing.T) {
	r := newRig(t, nil) // RequestTimeout 10 s: only the deadline can end it
	r.s.Wake("server-a", "fcm", fcmtest.TokenHang)
	require.Eventually(t, func() bool { return r.fake.InFlight() == 1 }, 5*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	require.ErrorIs(t, r.s.Shutdown(ctx), context.DeadlineExceeded)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, 1, r.count(OutcomeFailed), "the aborted send is counted before Shutdown returns")
	require.Zero(t, testutil.ToFloat64(r.m.PushInFlight))
}

func TestWake_TokenNeverLoggedOnlyItsFingerprint(t *testing.T) {
	r := newRig(t, func(o *Options) { o.RequestTimeout = 300 * time.Millisecond })
	tokens := []string{"ok-secret-AAAA", fcmtest.TokenUnregistered + "-secret-BBBB", fcmtest.TokenInvalid + "-secret-CCCC",
		fcmtest.TokenServerError + "-secret-DDDD", fcmtest.TokenHang + "-secret-EEEE", fcmtest.TokenRateLimited + "-secret-FFFF"}
	for i, tok := range tokens {
		r.s.Wake("server-"+string(rune('a'+i)), "fcm", tok)
		r.settle(i + 1)
	}
	log := r.log.String()
	require.Equal(t, len(tokens), strings.Count(log, `"event":"push_wake"`), "one line per send:\n%s", log)
	for _, tok := range tokens {
		require.NotContains(t, log, "secret")
		require.Contains(t, log, `"token_fp":"`+Fingerprint(tok)+`"`)
	}
	for _, never := range []string{"ya29.", "PRIVATE KEY", r.fake.Email, "dropped_attrs"} {
		require.NotContains(t, log, never)
	}
	require.Regexp(t, `^[0-9a-f]{8}$`, Fingerprint("x"))
}

func TestNew_CredentialsFileRefusals(t *testing.T) {
	fake := fcmtest.New(t)
	dir := t.TempDir()
	good := fake.WriteCredentials(t, dir, nil)
	secretish := []string{"PRIVATE KEY", fake.Email, fake.KeyID, "MII"}
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		require.NoError(t, os.Chmod(p, mode))
		return p
	}
	// A symlink is followed (a Kubernetes secret mount); one to a loose
	// file, or through a directory others may write, stays refused.
	link := filepath.Join(dir, "link.json")
	require.NoError(t, os.Symlink(write("linked644.json", fake.CredentialsJSON(nil), 0o644), link))
	openDir := filepath.Join(dir, "open-dir")
	require.NoError(t, os.Mkdir(openDir, 0o700))
	require.NoError(t, os.Chmod(openDir, 0o777))
	require.NoError(t, os.WriteFile(filepath.Join(openDir, "k.json"), fake.CredentialsJSON(nil), 0o400))
	viaOpenDir := filepath.Join(dir, "via-open-dir.json")
	require.NoError(t, os.Symlink(filepath.Join(openDir, "k.json"), viaOpenDir))
	sub := filepath.Join(dir, "a-dir")
	require.NoError(t, os.Mkdir(sub, 0o700))
	httpTokenURI := bytes.ReplaceAll(fake.CredentialsJSON(nil), []byte(fake.OAuth.URL), []byte("http://token.example.com"))
	noProject := bytes.ReplaceAll(fake.CredentialsJSON(nil), []byte(`"project_id"`), []byte(`"project_idx"`))
	badProject := bytes.ReplaceAll(fake.CredentialsJSON(nil), []byte(fake.Project), []byte("a/b"))

	cases := []struct {
		name string
		path string
		want error
	}{
		{"0644", write("c644.json", fake.CredentialsJSON(nil), 0o644), ErrCredentialsInsecure},
		{"0640", write("c640.json", fake.CredentialsJSON(nil), 0o640), ErrCredentialsInsecure},
		{"0604", write("c604.json", fake.CredentialsJSON(nil), 0o604), ErrCredentialsInsecure},
		{"symlink to a 0644 file", link, ErrCredentialsInsecure},
		{"symlink through a 0777 directory", viaOpenDir, ErrCredentialsInsecure},
		{"directory", sub, ErrCredentialsInsecure},
		{"missing", filepath.Join(dir, "missing.json"), ErrCredentialsInvalid},
		{"not json", write("garbage.json", []byte("not json at all"), 0o600), ErrCredentialsInvalid},
		{"user credentials", write("user.json", []byte(`{"type":"authorized_user","client_secret":"s3cret"}`), 0o600), ErrCredentialsInvalid},
		{"http token_uri", write("http.json", httpTokenURI, 0o600), ErrCredentialsInvalid},
		{"no project", write("noproj.json", noProject, 0o600), ErrCredentialsInvalid},
		{"project with a slash", write("badproj.json", badProject, 0o600), ErrCredentialsInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := Defaults()
			o.CredentialsFile = c.path
			_, err := New(o, Deps{})
			require.ErrorIs(t, err, c.want)
			msg := err.Error()
			require.Contains(t, msg, c.path, "the refusal names the file")
			require.NotContains(t, msg, "\n")
			for _, s := range append(secretish, "s3cret", "token.example.com", "a/b") {
				require.NotContains(t, msg, s, "the refusal quotes the file's contents")
			}
		})
	}
	// The 0600 original and 0400 start.
	o := Defaults()
	o.CredentialsFile = good
	s, err := New(o, Deps{})
	require.NoError(t, err)
	require.NoError(t, s.Shutdown(context.Background()))
	require.NoError(t, os.Chmod(good, 0o400))
	s, err = New(o, Deps{})
	require.NoError(t, err)
	require.NoError(t, s.Shutdown(context.Background()))
}

func TestOptions_Validate(t *testing.T) {
	for _, o := range []Options{
		{MaxInFlight: -1}, {MaxInFlight: 5000}, {Interval: -1}, {Burst: -1}, {RequestTimeout: -1}, {MaxServerIDs: -1},
		{Project: "p"}, // without credentials
		{Endpoint: "http://fcm.example.com"}, {Endpoint: "ftp://x"}, {Endpoint: "https://user:pw@fcm.example.com"},
	} {
		err := o.Validate()
		require.ErrorIs(t, err, ErrInvalidOptions, "%+v", o)
	}
	for _, ep := range []string{"https://fcm.googleapis.com", "http://127.0.0.1:8080", "http://[::1]:1"} {
		require.NoError(t, Options{Endpoint: ep}.Validate())
	}
	require.NoError(t, Defaults().Validate())
	require.True(t, errors.Is(Options{MaxInFlight: -1}.Validate(), ErrInvalidOptions))
}
