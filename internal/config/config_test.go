package config

import (
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/admission"
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
	}, c.Admission.TrustedProxies)
	require.Equal(t, c.Admission.TrustedProxies, c.Sockets.Trusted, "one --trust-proxy for both layers")
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
	require.NotContains(t, err.Error(), "relay:", "the caller adds the one prefix")
}

func TestDefaults_AreThePackagesOwn(t *testing.T) {
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:8080"}, nil, io.Discard)
	require.NoError(t, err)
	// config re-declares no limit: what the packages call default is what runs.
	want := admission.DefaultOptions()
	require.Equal(t, want.MaxConns, c.Admission.MaxConns)
	require.Equal(t, want.MaxConnsPerIP, c.Admission.MaxConnsPerIP)
	require.Equal(t, want.UpgradeRate, c.Admission.UpgradeRate)
	require.Equal(t, want.UpgradeBurst, c.Admission.UpgradeBurst)
	require.Equal(t, want.MaxTrackedIPs, c.Admission.MaxTrackedIPs)
	require.Equal(t, want.IdleTTL, c.Admission.IdleTTL)
	require.Equal(t, want.CapRetryAfter, c.Admission.CapRetryAfter)
	require.Equal(t, want.IPv6PrefixLen, c.Admission.IPv6PrefixLen)
	require.Equal(t, admission.DefaultSocketLimits(), c.Sockets)
	require.Equal(t, relay.Defaults(), c.Relay)
}

// The refusal line for each kind of bad value: the flag (or the RELAY_*
// variable), the value as given, and what a valid value looks like.
func TestRefusals_NameTheSourceAndAValidValue(t *testing.T) {
	plain := []string{"--insecure-listen", "127.0.0.1:0"}
	for name, tc := range map[string]struct {
		args []string
		env  map[string]string
		want string
	}{
		"duration without unit":    {[]string{"--ping-interval", "30"}, nil, "--ping-interval 30 is not a duration: use a number with a unit, e.g. 30s"},
		"duration from env":        {nil, map[string]string{"RELAY_PING_INTERVAL": "30"}, "RELAY_PING_INTERVAL=30 is not a duration: use a number with a unit, e.g. 30s"},
		"zero duration":            {[]string{"--pong-timeout", "0s"}, nil, "--pong-timeout 0s must be positive, e.g. 30s"},
		"zero duration from env":   {nil, map[string]string{"RELAY_PONG_TIMEOUT": "0s"}, "RELAY_PONG_TIMEOUT=0s must be positive, e.g. 30s"},
		"size with a suffix":       {[]string{"--max-message-bytes", "256KiB"}, nil, "--max-message-bytes 256KiB is not a whole number of bytes, e.g. 262144"},
		"size too small":           {[]string{"--max-message-bytes", "10"}, nil, "--max-message-bytes 10 must be at least 1024, e.g. 262144"},
		"size below another":       {[]string{"--phone-queue-bytes", "2048"}, nil, "--phone-queue-bytes 2048 must be at least --max-message-bytes plus 64, the per-item charge (262208)"},
		"admission field":          {[]string{"--upgrade-burst", "0"}, nil, "--upgrade-burst 0 must be at least 1, e.g. 20"},
		"admission field from env": {nil, map[string]string{"RELAY_MAX_CONNS": "100000"}, "--max-tracked-ips 65536 must be more than --max-conns (100000)"},
		"socket limits":            {[]string{"--max-sockets-per-ip", "0"}, nil, "--max-sockets-per-ip 0 must be at least 1, e.g. 128"},
		"count from env":           {nil, map[string]string{"RELAY_MAX_PHONES": "abc"}, "RELAY_MAX_PHONES=abc is not a whole number, e.g. 16"},
		"quoted when not plain":    {[]string{"--max-phones", "1 2"}, nil, `--max-phones "1 2" is not a whole number`},
		"needs --domain from env":  {nil, map[string]string{"RELAY_ACME_EMAIL": "a@b.c"}, "RELAY_ACME_EMAIL needs --domain"},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			if tc.args == nil {
				env["RELAY_INSECURE_LISTEN"] = "127.0.0.1:0"
			}
			_, err := Parse(append(slices.Clone(tc.args), plainIf(tc.args == nil, plain)...), envOf(env), io.Discard)
			require.ErrorIs(t, err, ErrInvalidConfig)
			var ce *Error
			require.ErrorAs(t, err, &ce, "typed, not a string to trim")
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "relay:", "the caller adds the one prefix")
			require.NotContains(t, err.Error(), `\"`, "no escaped quotes")
		})
	}
}

// The flag package's own errors (unknown flag, missing value, bad syntax)
// are reworded: the flag as typed (--name), never "flag provided but not
// defined: -name", and where to look.
func TestRefusals_FlagPackageErrorsReworded(t *testing.T) {
	for args, want := range map[string]string{
		"--insecure-listen 127.0.0.1:0 --no-such-flag":   "unknown flag --no-such-flag (relay serve -h lists the flags)",
		"--insecure-listen 127.0.0.1:0 -no-such-flag=1":  "unknown flag --no-such-flag (relay serve -h lists the flags)",
		"--insecure-listen 127.0.0.1:0 --ping-interval":  "--ping-interval needs a value, e.g. --ping-interval 30s (relay serve -h lists the flags)",
		"--insecure-listen":                              "--insecure-listen needs a value (relay serve -h lists the flags)",
		"--insecure-listen 127.0.0.1:0 ---ping-interval": "bad flag syntax ---ping-interval: use --name value or --name=value (relay serve -h lists the flags)",
	} {
		_, err := Parse(strings.Fields(args), nil, io.Discard)
		require.ErrorIs(t, err, ErrInvalidConfig, args)
		require.Equal(t, want, err.Error(), args)
	}
}

func plainIf(cond bool, plain []string) []string {
	if cond {
		return nil
	}
	return plain
}

func TestHelp_PrintsEveryFlagToTheGivenWriter(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		var out strings.Builder
		_, err := Parse(args, nil, &out)
		require.ErrorIs(t, err, ErrHelp)
		require.Contains(t, out.String(), "usage: relay serve")
		require.Contains(t, out.String(), "  --ping-interval duration\n")
		require.Contains(t, out.String(), "  --max-message-bytes bytes\n")
		require.Contains(t, out.String(), "  --forward-v1-token\n")
		require.Contains(t, out.String(), "(default 30s)")
	}
}
