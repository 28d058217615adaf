package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The suite builds the real binary once (plus a -tags relay_testhooks
// build for ATK-PANIC) and attacks it over loopback.
//
// Knobs for showing that a scenario fails when its defence is removed:
//
//	RELAY_ATTACK_BINARY=/path/to/relay        attack this build instead (e.g. a patched copy)
//	RELAY_ATTACK_EXTRA_FLAGS="--read-header-timeout=1h"   appended to every relay started
var (
	builtBinary, builtHooksBinary string
	buildErr                      error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "relay-attacks-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	builtBinary, builtHooksBinary, buildErr = buildRelay(dir)
	code := m.Run()
	stopNATS()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildRelay(dir string) (string, string, error) {
	if b := os.Getenv("RELAY_ATTACK_BINARY"); b != "" {
		return b, os.Getenv("RELAY_ATTACK_HOOKS_BINARY"), nil
	}
	bin := filepath.Join(dir, "relay")
	hooks := filepath.Join(dir, "relay-testhooks")
	for _, b := range []struct {
		out  string
		args []string
	}{{bin, nil}, {hooks, []string{"-tags", "relay_testhooks"}}} {
		args := append([]string{"build", "-o", b.out}, b.args...)
		cmd := exec.Command("go", append(args, "./cmd/relay")...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return bin, hooks, nil
}

// localTarget starts the main relay and returns a local target on it.
func localTarget(t *testing.T) *Target {
	t.Helper()
	require.NoError(t, buildErr, "building the relay")
	l := &Local{Binary: builtBinary, TestHooksBinary: builtHooksBinary, TempDir: t.TempDir(), NATSURL: natsURL(), SecureNATS: startSecureNATS}
	if f := os.Getenv("RELAY_ATTACK_EXTRA_FLAGS"); f != "" {
		l.ExtraFlags = strings.Fields(f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := l.Start(ctx, "--grace-period", "2s", "--probe-timeout", "1s")
	if err != nil {
		if p != nil {
			t.Fatalf("start relay: %v\n%s", err, p.LogText())
		}
		t.Fatalf("start relay: %v", err)
	}
	t.Cleanup(func() { p.Stop() })
	l.Main = p
	return &Target{Base: p.URL, Local: l}
}

// TestScenarios runs every scenario against the real binary; a Fail
// verdict fails the test, a Skip must give its reason.
func TestScenarios(t *testing.T) {
	target := localTarget(t)
	// TLSOnly scenarios run against a relay serving each key type (see keyRSA).
	tlsTargets := []struct {
		key string
		tgt *Target
	}{{keyRSA, localTLSTarget(t, keyRSA)}, {keyECDSA, localTLSTarget(t, keyECDSA)}}
	for _, sc := range Catalog() {
		t.Run(sc.ID, func(t *testing.T) {
			if !sc.TLSOnly {
				runScenario(t, target, sc)
				return
			}
			for _, tt := range tlsTargets {
				t.Run(tt.key, func(t *testing.T) { runScenario(t, tt.tgt, sc) })
			}
		})
	}
	if t.Failed() {
		return
	}
	// The main relay survived the whole catalog.
	_, _, err := target.healthz(context.Background())
	require.NoError(t, err, "main relay stopped serving during the attacks")
}

// runScenario runs sc against target: a Fail verdict fails the test with
// the logs of the relays involved, a Skip must give its reason.
func runScenario(t *testing.T, target *Target, sc Scenario) {
	t.Helper()
	before := len(target.Local.Started())
	rep := RunOne(context.Background(), target, sc)
	t.Logf("%s in %v: %s", rep.Result.Verdict, rep.Duration.Round(time.Millisecond), rep.Result.Evidence)
	switch rep.Result.Verdict {
	case Fail:
		for _, p := range target.Local.Started()[before:] {
			t.Logf("log of a relay this scenario started (%s):\n%s", p.Addr, tail(p.LogText(), 3000))
		}
		t.Fatalf("%s FAILED: %s\nmain relay log tail:\n%s", sc.ID, rep.Result.Evidence, tail(target.Local.Main.LogText(), 1500))
	case Skip:
		require.NotEmpty(t, rep.Result.Evidence, "a skip must say why")
		t.Skip(rep.Result.Evidence)
	}
}

// TestAttackCommand_RemoteMode drives Main the way an operator would,
// against the local relay as if it were remote.
func TestAttackCommand_RemoteMode(t *testing.T) {
	target := localTarget(t)
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", target.Base.String(), "--only", "ATK-CROSS-TENANT,ATK-BODY-LEAK,ATK-HEADER-ABUSE", "--json"}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, 3)
	for _, r := range reps {
		require.Equal(t, Pass, r.Verdict, "%s: %s", r.ID, r.Evidence)
	}
	require.Contains(t, errOut.String(), "ATK-CROSS-TENANT: running", "progress goes to stderr")
}

func TestAttackCommand_Usage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--target", "ftp://x"},
		{"--target", "not a url"},
		{"--target", "http://127.0.0.1:1", "--only", "ATK-NOPE"},
		{"--target", "http://127.0.0.1:1", "--only", "ATK-PANIC"},
		{"--target", "http://127.0.0.1:1", "--ca", "/nonexistent/ca.pem"},
		{"--bogus"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		require.Equal(t, 2, Main(args, &out, &errOut), "args %q", args)
		require.NotEmpty(t, errOut.String(), "args %q: a usage error says why", args)
	}
}

func TestAttackCommand_FailureExitsOne(t *testing.T) {
	// Nothing listens on this loopback port: the scenario fails, exit 1.
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", "http://127.0.0.1:1", "--only", "ATK-CROSS-TENANT", "--timeout", "30s"}, &out, &errOut)
	require.Equal(t, 1, code)
	require.Contains(t, out.String(), "FAIL")
}

func TestAttackCommand_List(t *testing.T) {
	var out, errOut bytes.Buffer
	require.Equal(t, 0, Main([]string{"--list"}, &out, &errOut))
	for _, th := range Threats() {
		require.Contains(t, out.String(), th.ID)
	}
	for _, sc := range Catalog() {
		require.Contains(t, out.String(), sc.ID)
	}
	require.Contains(t, out.String(), "not executable")
}

func TestCatalog_WellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Catalog() {
		require.True(t, strings.HasPrefix(sc.ID, "ATK-"), sc.ID)
		require.False(t, seen[sc.ID], "duplicate scenario %s", sc.ID)
		seen[sc.ID] = true
		require.NotEmpty(t, sc.Title, sc.ID)
		require.NotEmpty(t, sc.Threats, sc.ID)
		require.NotNil(t, sc.Run, sc.ID)
		if sc.Mode == RemoteSafe {
			require.NotEmpty(t, sc.Bounds, "%s: a remote-safe scenario states its load", sc.ID)
		}
	}
}
