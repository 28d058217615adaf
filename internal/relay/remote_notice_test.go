package relay

import (
	"context"
	"sync"
	"testing"

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
