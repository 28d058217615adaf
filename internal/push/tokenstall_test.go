package push

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/fcmtest"
)

// stallTimeout is --push-timeout in the token-stall tests: short, so a
// wake that waits it out is quick, and far below what a weakened bound
// (the timeout times ten, or none) would take.
const stallTimeout = 400 * time.Millisecond

// settleWithin waits until total wakes are counted and reports how long
// that took; it fails the test past limit.
func (r *rig) settleWithin(total int, limit time.Duration) time.Duration {
	r.t.Helper()
	start := time.Now()
	require.Eventually(r.t, func() bool {
		n := 0
		for _, c := range r.counts() {
			n += c
		}
		return n == total
	}, limit, 5*time.Millisecond, "outcomes %v after %v, want %d in all within %v", r.counts(), time.Since(start), total, limit)
	return time.Since(start)
}

// fetchEnds waits until no token fetch is running, failing the test if one
// still runs limit from now: a stalled fetch must end at its own bound.
func (r *rig) fetchEnds(limit time.Duration) {
	r.t.Helper()
	require.Eventually(r.t, func() bool {
		r.s.tokens.mu.Lock()
		defer r.s.tokens.mu.Unlock()
		return r.s.tokens.fetching == nil
	}, limit, 5*time.Millisecond, "the stalled token fetch still runs %v after its wakes failed", limit)
}

// A token endpoint that accepts and never answers, in each way it can: the
// TCP connection never read, the request read and never answered, the
// answer's body cut off after the headers. Every wake waiting on that fetch
// ends "failed" within --push-timeout (not later), its in-flight slot comes
// back, and the wakes after it are not held by the stalled fetch: once the
// endpoint answers again, the next wake fetches a token and is sent. A
// fetch bounded by anything longer than --push-timeout (or by nothing)
// would still be running, and the later wakes, which share the running
// fetch, would fail with it.
func TestWake_StalledTokenEndpoint_BoundedByPushTimeout_LaterWakesProceed(t *testing.T) {
	for _, mode := range []struct {
		name string
		m    fcmtest.TokenStall
	}{{"accepted never read", fcmtest.StallAccept}, {"read never answered", fcmtest.StallAnswer}, {"body cut off", fcmtest.StallBody}} {
		t.Run(mode.name, func(t *testing.T) {
			fake := fcmtest.New(t)
			fake.StallTokens(1, mode.m)
			r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), func(o *Options) {
				o.RequestTimeout = stallTimeout
				o.MaxInFlight = 4
			})
			// Four wakes share the stalled fetch and hold every slot.
			start := time.Now()
			for i := range 4 {
				require.Equal(t, Outcome(""), r.s.TryWake(fmt.Sprintf("server-%d", i), "fcm", "tok"))
			}
			require.Eventually(t, func() bool { return fake.Stalled() == 1 }, 5*time.Second, 5*time.Millisecond, "the endpoint never stalled a fetch")
			require.Equal(t, OutcomeDroppedInflight, r.s.TryWake("server-x", "fcm", "tok"), "the stalled wakes hold the slots")
			r.settleWithin(5, 3*time.Second+stallTimeout)
			took := time.Since(start)
			require.Equal(t, 4, r.count(OutcomeFailed), "%v", r.counts())
			require.GreaterOrEqual(t, took, stallTimeout*9/10, "the wakes failed before the timeout: the stall was not waited on, so it proves nothing")
			require.Zero(t, testutil.ToFloat64(r.m.PushInFlight))
			require.Empty(t, fake.Requests(), "no FCM request without an access token")

			// The endpoint answers again. The stalled fetch ended at its own
			// bound, so later wakes are not held by it: each is sent.
			r.fetchEnds(stallTimeout)
			for i := range 3 {
				require.Equal(t, Outcome(""), r.s.TryWake(fmt.Sprintf("server-late-%d", i), "fcm", "tok"))
			}
			r.settleWithin(8, 5*time.Second) // the bound under test is fetchEnds's
			require.Equal(t, 3, r.count(OutcomeSent), "later wakes after a stalled token fetch: %v", r.counts())
			require.Len(t, fake.Requests(), 3)
			require.Equal(t, 1, fake.Stalled())
		})
	}
}

// A wake that arrives while a fetch is stalled waits at most its own
// --push-timeout, not the stalled fetch's: it ends failed no later than its
// own deadline, and the wake after it (the fetch over) is sent.
func TestWake_JoiningAStalledFetch_WaitsOnlyItsOwnTimeout(t *testing.T) {
	fake := fcmtest.New(t)
	fake.StallTokens(1, fcmtest.StallAnswer)
	r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), func(o *Options) { o.RequestTimeout = stallTimeout })
	r.s.Wake("server-a", "fcm", "tok")
	require.Eventually(t, func() bool { return fake.Stalled() == 1 }, 5*time.Second, 5*time.Millisecond)
	r.s.Wake("server-b", "fcm", "tok") // joins the running fetch
	took := r.settleWithin(2, 3*time.Second+stallTimeout)
	require.Equal(t, 2, r.count(OutcomeFailed))
	require.Less(t, took, 3*time.Second+stallTimeout)
	r.fetchEnds(stallTimeout)
	r.s.Wake("server-c", "fcm", "tok")
	r.settleWithin(3, 5*time.Second)
	require.Equal(t, 1, r.count(OutcomeSent))
	require.Equal(t, 2, fake.TokenRequests(), "the stalled fetch and one more, shared by nobody else")
}

// Shutdown's deadline ends a stalled token fetch too: with --push-timeout
// far away, only the Sender's own context can end it.
func TestShutdown_DeadlineAbortsStalledTokenFetch(t *testing.T) {
	for _, mode := range []fcmtest.TokenStall{fcmtest.StallAccept, fcmtest.StallAnswer, fcmtest.StallBody} {
		fake := fcmtest.New(t)
		fake.StallTokens(1, mode)
		r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), nil) // RequestTimeout 10 s
		r.s.Wake("server-a", "fcm", "tok")
		require.Eventually(t, func() bool { return fake.Stalled() == 1 }, 5*time.Second, 5*time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		require.ErrorIs(t, r.s.Shutdown(ctx), context.DeadlineExceeded)
		cancel()
		require.Less(t, time.Since(start), 3*time.Second, "mode %d: Shutdown waited for the stalled fetch", mode)
		require.Equal(t, 1, r.count(OutcomeFailed))
	}
}
