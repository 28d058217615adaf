package relay

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sentLinks is a Backplane that records what the routing core sends.
type sentLinks struct {
	mu   sync.Mutex
	sent []LinkMessage
}

func (s *sentLinks) Acquire(context.Context, string) (ClaimOutcome, error) {
	return ClaimGranted, nil
}
func (s *sentLinks) SetGrace(string, bool) {}
func (s *sentLinks) Release(string)        {}
func (s *sentLinks) Join(context.Context, string) (JoinOutcome, error) {
	return JoinOutcome{}, ErrClusterUnavailable
}
func (s *sentLinks) Send(_ string, m LinkMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, m)
	return nil
}

// A phone whose socket is here and whose binary is on another instance
// leaves: its owner is asked to send the binary a close notice exactly when
// single-instance mode would send one. An eviction (the claim moved: a
// reclaim, a takeover, a grace expiry, or the owner dropped the phone)
// gets none, even if the owner has not dropped its old slot yet.
func TestLeaveRemote_NoticeExactlyWhenSingleInstanceSendsOne(t *testing.T) {
	rl, err := New(fastOptions(), Deps{})
	require.NoError(t, err)
	bp := &sentLinks{}
	rl.SetBackplane(bp, "home")
	for _, tc := range []struct {
		name   string
		cause  closeCause
		notify bool
	}{
		{"evicted: claim moved (Superseded)", closeCause{code: CodeNoBinary, reason: reasonNoBinary}, false},
		{"evicted by the owner (LinkEvict 1011)", closeCause{code: CodeInternal, reason: reasonNoBinary}, false},
		{"close directive", closeCause{code: 4401, directive: true}, false},
		{"phone's own close", closeCause{code: 1000, byPeer: true, notify: true}, true},
		{"phone's own close with 4404", closeCause{code: CodeNoBinary, byPeer: true, notify: true}, true},
		{"invalid frame", closeCause{code: CodeInvalidPayload, reason: reasonBadFrame, notify: true}, true},
		{"this instance shuts down", closeCause{code: CodeGoingAway, reason: reasonShutdown}, true},
		{"link lost here", closeCause{code: CodeInternal, reason: reasonLinkLost}, true},
	} {
		p := &phoneConn{wsEnd: &wsEnd{cause: tc.cause}, rl: rl, serverID: "s", connID: "client-0000000000000001",
			route: &proxyRoute{owner: "owner"}}
		p.leaveRemote()
		bp.mu.Lock()
		last := bp.sent[len(bp.sent)-1]
		bp.mu.Unlock()
		require.Equal(t, LinkLeave, last.Kind, tc.name)
		require.Equal(t, int(tc.cause.code), last.Code, tc.name)
		require.Equal(t, tc.notify, last.Notify, tc.name)
	}
}

// Chaos finding 14: a remote phone is lost by its owner (its queue here
// full, as behind a stalled binary) while its stub's dispatch holds a
// frame that has passed the stub's stop check but not yet reached the
// binary's write turn. The binary must read that frame, then the phone's
// one close notice; the notice first broke "exactly one, after the phone's
// last frame" (docs/cluster.md). The hook holds the frame exactly there.
func TestClusterStub_LostWithAFrameInHand_NoticeFollowsTheFrame(t *testing.T) {
	bp := &fakeBackplane{}
	h := newClusterHarness(t, func(*Options) {}, bp)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.rl.hookStubPassedStop = func() { once.Do(func() { close(held); <-release }) }
	bin := h.dialBinary("s")
	stub, code := h.rl.AdmitRemote("home", "s")
	require.Zero(t, code)

	pad := strings.Repeat("x", 15<<10)
	frame := func(i uint64) []byte { return []byte(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad)) }
	h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "s", ConnID: stub, Seq: 1, Frame: frame(1)})
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the stub's dispatch never took frame 1")
	}
	// Frames 2.. queue behind it until the stub's cap (64 KiB) is passed:
	// the owner loses the stub, 1011 with a notice, as in the chaos run.
	for i := uint64(2); len(bp.find(LinkEvict, stub)) == 0; i++ {
		require.Less(t, i, uint64(16), "a stub past --phone-queue-bytes was never lost")
		h.rl.Receive("home", LinkMessage{Kind: LinkUp, ServerID: "s", ConnID: stub, Seq: i, Frame: frame(i)})
	}
	bin.silent(300 * time.Millisecond) // the notice waits for the frame in hand
	close(release)

	env := bin.envelope()
	require.Equal(t, stub, env.ConnID)
	require.Contains(t, string(env.Frame), `"n":1,`, "the frame in hand comes first")
	env = bin.envelope()
	require.Equal(t, stub, env.ConnID)
	require.Equal(t, int(CodeInternal), env.CloseCode, "then the phone's close notice")
	require.Nil(t, env.Frame)
	bin.silent(100 * time.Millisecond) // frames 2.. were discarded with the stub
	h.eventually(func() bool { return h.rl.QueuedBytes() == 0 }, "the lost stub's charge returns to zero: %d", h.rl.QueuedBytes())
}
