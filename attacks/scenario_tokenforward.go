package attacks

import (
	"bytes"
	"context"
	"time"
)

// Token forwarding: with the default flags the relay never copies a phone's
// x-pyrycode-token into what the binary receives, so whoever holds a
// server-id (a squatter that won the claim race included) learns no device
// tokens. Locally the legacy --forward-v1-token switch is run too, as the
// positive control: the same check must see the token on the first
// envelope only, proving the scenario would notice forwarding. Remotely
// only the deployed relay's answer counts (a relay run with
// --forward-v1-token fails: that is the threat); the positive control is
// CI's.
func tokenForward() Scenario {
	return Scenario{
		ID:      "ATK-TOKEN-FORWARD",
		Title:   "Device tokens are not forwarded to the server-id holder unless --forward-v1-token is set",
		Threats: []string{"TM-ROUTE-4"},
		Mode:    RemoteSafe,
		Bounds:  "1 binary, 1 phone with a canary token, 3 small frames",
		Run:     runTokenForward,
	}
}

func runTokenForward(ctx context.Context, t *Target) Result {
	seen, err := tokenSeenByBinary(ctx, t)
	if err != nil {
		return Failf("default flags: %v", err)
	}
	if seen != 0 {
		return Failf("the server-id holder received the phone's token in %d of 3 envelope(s) (Relay.ServePhone in internal/relay/relay.go, which keeps it only with --forward-v1-token)", seen)
	}
	if t.Local == nil {
		return Passf("a phone's canary token absent from all 3 envelopes its binary received")
	}
	seen, err = tokenSeenByBinary(ctx, t, "--forward-v1-token")
	if err != nil {
		return Failf("--forward-v1-token: %v", err)
	}
	if seen != 1 {
		return Failf("--forward-v1-token: token in %d envelopes, want exactly the first (positive control)", seen)
	}
	return Passf("default: token absent from all envelopes; --forward-v1-token: token on the first envelope only")
}

// tokenSeenByBinary joins a phone with a canary token, sends two more
// frames and counts the envelopes (of three) that carry the token.
func tokenSeenByBinary(ctx context.Context, t *Target, flags ...string) (int, error) {
	tgt, _, stop, err := dedicated(ctx, t, flags...)
	if err != nil {
		return 0, err
	}
	defer stop()
	s, err := newSession(ctx, tgt)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	token := canary("token")
	p, err := s.addPhone(phoneHeaders(s.ServerID, token))
	if err != nil {
		return 0, err
	}
	for i := 0; i < 2; i++ {
		if _, err := s.roundTrip(p, 3*time.Second); err != nil {
			return 0, err
		}
	}
	n := 0
	for _, e := range s.Seen {
		if bytes.Contains(e.Raw, []byte(token)) {
			n++
		}
	}
	return n, nil
}
