package config

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Merge takes the reloadable settings that changed, leaves (and reports)
// the others, and updates the settings it took, so a second identical
// reload changes nothing.
func TestMerge_TakesReloadable_KeepsTheRest(t *testing.T) {
	p := writeConfig(t, "insecure-listen = \"127.0.0.1:0\"\nmax-conns = 100\nmax-phones = 4\n")
	cur, err := Parse([]string{"--config", p}, nil, io.Discard)
	require.NoError(t, err)
	q := writeConfig(t, "insecure-listen = \"127.0.0.1:0\"\nmax-conns = 200\nmax-phones = 8\nlog-level = \"debug\"\ndrain-delay = \"1s\"\nupgrade-burst = 5\nmax-sockets-per-ip = 300\nmax-sockets = 9000\n")
	next, err := Parse([]string{"--config", q}, nil, io.Discard)
	require.NoError(t, err)

	merged, applied, kept := cur.Merge(next)
	names := func(ss []Setting) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return out
	}
	require.ElementsMatch(t, []string{"max-conns", "log-level", "drain-delay", "upgrade-burst", "max-sockets-per-ip", "max-sockets"}, names(applied))
	require.Equal(t, []string{"max-phones"}, names(kept))
	require.Equal(t, 200, merged.Admission.MaxConns)
	require.Equal(t, 5, merged.Admission.UpgradeBurst)
	require.Equal(t, "debug", merged.LogLevel)
	require.Equal(t, time.Second, merged.DrainDelay)
	require.Equal(t, 9000, merged.Sockets.Max)
	require.Equal(t, 300, merged.Sockets.MaxPerIP)
	require.Equal(t, 4, merged.Relay.MaxPhones, "kept")
	require.NoError(t, merged.Validate())
	require.Equal(t, 100, cur.Admission.MaxConns, "the running config is not changed in place")

	again, applied, kept := merged.Merge(next)
	require.Empty(t, applied, "the same file again applies nothing")
	require.Equal(t, []string{"max-phones"}, names(kept), "and still reports what it cannot apply")
	require.Equal(t, merged.Admission, again.Admission)
	for _, name := range Reloadable {
		var m Config
		require.True(t, take(&m, next, name), name)
	}
}
