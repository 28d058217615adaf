package config

import (
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/relay"
)

func envOf(m map[string]string) Env { return func(k string) string { return m[k] } }

func TestDefaults_MatchProtocolSection8(t *testing.T) {
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:8080"}, nil, io.Discard)
	require.NoError(t, err)
	o := c.Relay
	require.Equal(t, 30*time.Second, o.PingInterval)
	require.Equal(t, 30*time.Second, o.PongTimeout)
	require.Equal(t, 30*time.Second, o.ReadTimeout)
	require.Equal(t, 10*time.Second, o.WriteTimeout)
	require.Equal(t, 5*time.Second, c.ReadHeaderTimeout)
	require.Equal(t, 30*time.Second, o.GracePeriod)
	require.Equal(t, 10*time.Second, o.ProbeTimeout)
	require.Equal(t, 10*time.Second, c.ShutdownTimeout)
	require.Equal(t, int64(256<<10), o.MaxMessageBytes)
	require.Equal(t, int64(4<<20), o.PhoneQueueBytes)
	require.Equal(t, 16, o.MaxPhones)
	require.False(t, o.ForwardV1Token, "token forwarding must be opt-in")
	require.Equal(t, ModeInsecure, c.Mode)
	require.Empty(t, c.MetricsListen, "metrics listener must be opt-in")
}

func TestEnv_SetsFlags_CommandLineWins(t *testing.T) {
	env := envOf(map[string]string{"RELAY_MAX_PHONES": "8", "RELAY_GRACE_PERIOD": "5s", "RELAY_INSECURE_LISTEN": "127.0.0.1:9"})
	c, err := Parse([]string{"--max-phones", "4"}, env, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 4, c.Relay.MaxPhones, "the command line overrides the environment")
	require.Equal(t, 5*time.Second, c.Relay.GracePeriod)
	require.Equal(t, "127.0.0.1:9", c.InsecureListen)
}

func TestTrustProxy_CIDRsAndBareAddresses(t *testing.T) {
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--trust-proxy", "10.1.2.3, 192.168.0.0/16,::ffff:10.0.0.9,2001:db8::/32"}, nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.1.2.3/32"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("10.0.0.9/32"),
		netip.MustParsePrefix("2001:db8::/32"),
	}, c.TrustProxy)
}

func TestRefusals_WrapErrInvalidConfig(t *testing.T) {
	for name, args := range map[string][]string{
		"no mode":                {},
		"two modes":              {"--insecure-listen", "127.0.0.1:0", "--domain", "relay.example.test"},
		"acme flag without mode": {"--insecure-listen", "127.0.0.1:0", "--acme-email", "a@b.c"},
		"zero timer":             {"--insecure-listen", "127.0.0.1:0", "--pong-timeout", "0s"},
		"queue below message":    {"--insecure-listen", "127.0.0.1:0", "--phone-queue-bytes", "2048", "--max-message-bytes", "4096"},
		"per-ip above global":    {"--insecure-listen", "127.0.0.1:0", "--max-conns", "10", "--max-conns-per-ip", "11"},
		"listen not host:port":   {"--insecure-listen", "8080"},
		"stray argument":         {"--insecure-listen", "127.0.0.1:0", "extra"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(args, nil, io.Discard)
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalidConfig), "%v", err)
		})
	}
}

func TestRelayOptionErrors_ComeBackAsOneConfigLine(t *testing.T) {
	_, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--max-phones", "0"}, nil, io.Discard)
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.NotContains(t, err.Error(), "\n")
	require.Contains(t, err.Error(), "--max-phones")
	require.NotContains(t, err.Error(), relay.ErrInvalidOptions.Error(), "one error prefix, not two")
}
