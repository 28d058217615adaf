package config

import (
	"errors"
	"io"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

// Issue 13 item 6: an IPv4-mapped --trust-proxy prefix names IPv4 peers,
// which every layer sees unmapped. It used to stay mapped, so the per-IP
// socket cap (which compares unmapped addresses) never exempted the proxy.
// It is normalised once, here, for every layer.
func TestTrustProxy_IPv4MappedPrefixNormalised(t *testing.T) {
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--trust-proxy", "::ffff:127.0.0.0/104, ::ffff:10.0.0.9/128"}, nil, io.Discard)
	require.NoError(t, err)
	want := []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.9/32"),
	}
	require.Equal(t, want, c.Sockets.Trusted)
	require.Equal(t, want, c.Admission.TrustedProxies)
	require.True(t, c.Sockets.Trusted[0].Contains(netip.MustParseAddr("127.0.0.1")), "the socket cap must exempt the proxy")
}

// Issue 13 item 7: RELAY_PRODUCTION is read like every other boolean
// RELAY_* variable, and a value that is not a boolean refuses the start
// instead of silently turning the production policy off.
func TestProduction_ParsedLikeOtherBooleans_UnparseableRefused(t *testing.T) {
	parse := func(v string) (Config, error) {
		return Parse([]string{"--insecure-listen", "127.0.0.1:0"}, envOf(map[string]string{"RELAY_PRODUCTION": v}), io.Discard)
	}
	for _, on := range []string{"1", "true", "TRUE", "True", "t"} {
		_, err := parse(on)
		require.ErrorIsf(t, err, ErrInvalidConfig, "RELAY_PRODUCTION=%s must turn the policy on (plain HTTP refused)", on)
		require.Contains(t, err.Error(), "plain HTTP")
	}
	for _, off := range []string{"", "0", "false", "FALSE", "f"} {
		c, err := parse(off)
		require.NoErrorf(t, err, "RELAY_PRODUCTION=%q", off)
		require.False(t, c.Production)
	}
	for _, bad := range []string{"yes", "on", "2", "enabled", "1 "} {
		_, err := parse(bad)
		require.Errorf(t, err, "RELAY_PRODUCTION=%q accepted", bad)
		require.True(t, errors.Is(err, ErrInvalidConfig))
		require.Contains(t, err.Error(), "RELAY_PRODUCTION=")
		require.Contains(t, err.Error(), "not a boolean")
	}
}

// Issue 13 item 5: a per-phone queue that cannot hold one maximum-size
// frame with its 64-byte item charge is refused at start.
func TestPhoneQueue_MustHoldOneFrameAndItsCharge(t *testing.T) {
	_, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--max-message-bytes", "65536", "--phone-queue-bytes", "65536"}, nil, io.Discard)
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.Contains(t, err.Error(), "--phone-queue-bytes 65536")
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--max-message-bytes", "65536", "--phone-queue-bytes", "65600", "--max-queued-bytes", "65600"}, nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, int64(65600), c.Relay.PhoneQueueBytes)
	_, err = Parse([]string{"--insecure-listen", "127.0.0.1:0", "--max-message-bytes", "65536", "--phone-queue-bytes", "65600", "--max-queued-bytes", "65599"}, nil, io.Discard)
	require.ErrorIs(t, err, ErrInvalidConfig, "a relay-wide budget below one frame and its charge")
}
