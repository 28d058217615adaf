package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The suite builds the real binary once (and, on first use, a -tags
// relay_testhooks build for ATK-PANIC) and attacks it over loopback.
//
// Knobs for showing that a scenario fails when its defence is removed:
//
//	RELAY_ATTACK_BINARY=/path/to/relay        attack this build instead (e.g. a patched copy)
//	RELAY_ATTACK_EXTRA_FLAGS="--read-header-timeout=1h"   appended to every relay started
var (
	builtBinary string
	buildErr    error
	buildDir    string
	hooksBuild  struct {
		once sync.Once
		bin  string
		err  error
	}
)

// testParallel is how many of this package's parallel tests run at once
// unless -parallel says otherwise. They spend their time waiting on relays'
// timers and admission limits, not on the CPU, so go test's default
// (GOMAXPROCS: 2 on CI) would leave most of that waiting in series.
const testParallel = 6

func TestMain(m *testing.M) {
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", strconv.Itoa(max(testParallel, runtime.GOMAXPROCS(0))))
	}
	dir, err := os.MkdirTemp("", "relay-attacks-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	builtBinary, buildErr = buildRelay(dir, "relay")
	code := m.Run()
	stopNATS()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildRelay builds cmd/relay into dir/name with extra go build flags, or
// returns RELAY_ATTACK_BINARY when set.
func buildRelay(dir, name string, flags ...string) (string, error) {
	if b := os.Getenv("RELAY_ATTACK_BINARY"); b != "" {
		return b, nil
	}
	bin := filepath.Join(dir, name)
	// The shipped build's flags (make build: static, -trimpath), so the
	// suite attacks what ships and the go command reuses what make build
	// (and CI's earlier steps) compiled.
	args := append(append([]string{"build", "-trimpath", "-o", bin}, flags...), "./cmd/relay")
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// hooksBinary is Local.TestHooks: the -tags relay_testhooks build, made on
// first use (RELAY_ATTACK_HOOKS_BINARY, maybe "", when RELAY_ATTACK_BINARY
// is set).
func hooksBinary() (string, error) {
	hooksBuild.once.Do(func() {
		if os.Getenv("RELAY_ATTACK_BINARY") != "" {
			hooksBuild.bin = os.Getenv("RELAY_ATTACK_HOOKS_BINARY") // "": ATK-PANIC skips
			return
		}
		hooksBuild.bin, hooksBuild.err = buildRelay(buildDir, "relay-testhooks", "-tags", "relay_testhooks")
	})
	return hooksBuild.bin, hooksBuild.err
}

// localTarget starts the main relay and returns a local target on it.
func localTarget(t *testing.T) *Target {
	t.Helper()
	require.NoError(t, buildErr, "building the relay")
	l := &Local{Binary: builtBinary, TestHooks: hooksBinary, TempDir: t.TempDir(), NATSURL: natsURL(), SecureNATS: startSecureNATS}
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
	t.Parallel()
	target := localTarget(t)
	// TLSOnly scenarios run against a relay serving each key type (see
	// keyRSA), started by the first of them to run and kept for the rest
	// (a run of other scenarios starts none).
	tlsTargets := map[string]*Target{}
	for _, sc := range Catalog() {
		t.Run(sc.ID, func(st *testing.T) {
			if !sc.TLSOnly {
				runScenario(st, target, sc)
				return
			}
			for _, key := range []string{keyRSA, keyECDSA} {
				st.Run(key, func(kt *testing.T) {
					if tlsTargets[key] == nil {
						tlsTargets[key] = localTLSTarget(kt, t, key)
					}
					runScenario(kt, tlsTargets[key], sc)
				})
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
	case Fail, CouldNotRun:
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
	t.Parallel()
	target := localTarget(t)
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", target.Base.String(), "--only", "ATK-CROSS-TENANT,ATK-BODY-LEAK,ATK-HEADER-ABUSE", "--json",
		"--source-base", "https://mirror.example/relay"}, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, 3)
	doc, _ := parseThreatModel(t)
	anchors := map[string]bool{}
	for _, d := range doc {
		anchors[d.ID] = true
	}
	for _, r := range reps {
		require.Equal(t, Pass, r.Verdict, "%s: %s", r.ID, r.Evidence)
		// The JSON carries the report's references: the scenario's file
		// and each threat's entry, as repository paths and as URLs.
		_, err := os.Stat(filepath.Join("..", r.Source))
		require.NoError(t, err, "%s: source %s", r.ID, r.Source)
		require.Equal(t, "https://mirror.example/relay/"+r.Source, r.SourceURL)
		require.Len(t, r.ThreatRefs, len(r.Threats))
		for i, ref := range r.ThreatRefs {
			require.Equal(t, r.Threats[i], ref.ID)
			require.NotEmpty(t, ref.Title)
			id, ok := strings.CutPrefix(ref.Doc, "docs/threat-model.md#")
			require.True(t, ok && anchors[id], "%s: %s is not an anchor of the threat model", r.ID, ref.Doc)
			require.Equal(t, "https://mirror.example/relay/"+ref.Doc, ref.URL)
		}
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

// notARelay is a real HTTP server that is not a relay: every request,
// /healthz included, gets 200 "ok", and no upgrade is ever accepted. The
// suite reaches it, so each scenario run against it is a finding, not a
// setup error. It counts the requests it saw.
func notARelay(t *testing.T, tlsToo bool) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.WriteString(w, "ok")
	})
	var srv *httptest.Server
	if tlsToo {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv, &n
}

// TestAttackCommand_FindingExitsOne: a target that answers but does not
// defend (here it routes nothing at all) is a finding: FAIL, exit 1.
func TestAttackCommand_FindingExitsOne(t *testing.T) {
	t.Parallel()
	srv, _ := notARelay(t, false)
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", srv.URL, "--only", "ATK-CROSS-TENANT", "--timeout", "30s"}, &out, &errOut)
	require.Equal(t, ExitFinding, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	require.Regexp(t, `ATK-CROSS-TENANT\s+\S+\s+FAIL`, out.String())
	require.Contains(t, out.String(), "verdicts: PASS 0, FAIL 1, SKIP 0, COULD-NOT-RUN 0; exit 1")
}

// TestAttackCommand_TargetDownCouldNotRun: nothing listens on the target's
// port: no scenario is attacked, each says it could not run and why, and
// the exit code is 3, not the 1 of a finding.
func TestAttackCommand_TargetDownCouldNotRun(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := "http://" + l.Addr().String()
	require.NoError(t, l.Close()) // a port that was just free: connection refused
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", down, "--only", "ATK-CROSS-TENANT,ATK-BODY-LEAK", "--timeout", "30s"}, &out, &errOut)
	require.Equal(t, ExitCouldNotRun, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	require.NotRegexp(t, `(?m)^ATK-\S+\s+\S+\s+FAIL\s`, out.String())
	require.Regexp(t, `ATK-CROSS-TENANT\s+\S+\s+COULD-NOT-RUN\s+\S+\s+not attacked: target unreachable: `+regexp.QuoteMeta(down)+`: .*refused`, out.String())
	require.Regexp(t, `ATK-BODY-LEAK\s+\S+\s+COULD-NOT-RUN`, out.String())
	require.Contains(t, out.String(), "COULD-NOT-RUN 2; exit 3")
	require.Contains(t, errOut.String(), "nothing attacked")
}

// TestAttackCommand_MissingCACouldNotRun: a relay whose certificate a
// private CA signed, attacked without --ca: could not run (exit 3), and the
// evidence names the flag.
func TestAttackCommand_MissingCACouldNotRun(t *testing.T) {
	t.Parallel()
	srv, seen := notARelay(t, true)
	var out, errOut bytes.Buffer
	code := Main([]string{"--target", srv.URL, "--only", "ATK-CROSS-TENANT", "--json", "--timeout", "30s"}, &out, &errOut)
	require.Equal(t, ExitCouldNotRun, code, "stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	var reps []jsonReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &reps))
	require.Len(t, reps, 1)
	require.Equal(t, CouldNotRun, reps[0].Verdict)
	require.Contains(t, reps[0].Evidence, "pass the relay's CA with --ca FILE")
	require.Zero(t, seen.Load(), "no request got past the handshake")

	// With the CA the same target is reached, and is a finding.
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644))
	out.Reset()
	code = Main([]string{"--target", srv.URL, "--ca", ca, "--only", "ATK-CROSS-TENANT", "--json", "--timeout", "30s"}, &out, &errOut)
	require.Equal(t, ExitFinding, code, "stdout:\n%s", out.String())
}

// TestAttackCommand_UnwritableOutputNothingAttacked: an output path that
// cannot be written is found before the first request: exit 3, every
// scenario could not run, the target saw nothing, and the outputs that can
// be written say so.
func TestAttackCommand_UnwritableOutputNothingAttacked(t *testing.T) {
	t.Parallel()
	srv, seen := notARelay(t, false)
	dir := t.TempDir()
	prom, junit := filepath.Join(dir, "a.prom"), filepath.Join(dir, "a.xml")
	for _, bad := range [][]string{
		{"--report", filepath.Join(dir, "missing", "r.html")},
		{"--junit", dir}, // a directory
	} {
		var out, errOut bytes.Buffer
		args := append([]string{"--target", srv.URL, "--only", "ATK-CROSS-TENANT,ATK-HEADER-ABUSE", "--prom-textfile", prom}, bad...)
		if bad[0] != "--junit" {
			args = append(args, "--junit", junit)
		}
		code := Main(args, &out, &errOut)
		require.Equal(t, ExitCouldNotRun, code, "%v: stdout:\n%s\nstderr:\n%s", bad, out.String(), errOut.String())
		require.Contains(t, errOut.String(), bad[0]+" "+bad[1]+" cannot be written")
		require.Zero(t, seen.Load(), "%v: the target was attacked although an output could not be written", bad)
		require.Contains(t, out.String(), "COULD-NOT-RUN 2; exit 3")
		b, err := os.ReadFile(prom)
		require.NoError(t, err)
		require.Regexp(t, `(?m)^relay_attack_scenario_result\{scenario="ATK-CROSS-TENANT",threats="[^"]+"\} -2$`, string(b))
		require.Regexp(t, `(?m)^relay_attack_exit_code 3$`, string(b))
	}
}

// TestRun_TargetLostMidRun: a target that stops answering during a failed
// scenario is a finding (the attack may have taken it down; the evidence
// says so), and the scenarios after it could not run. One that goes away
// after a pass leaves no finding: the rest could not run, exit 3.
func TestRun_TargetLostMidRun(t *testing.T) {
	for _, tc := range []struct {
		name     string
		first    Verdict
		wantCode int
	}{{"after a failure", Fail, ExitFinding}, {"after a pass", Pass, ExitCouldNotRun}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := notARelay(t, false)
			u, err := url.Parse(srv.URL)
			require.NoError(t, err)
			tgt := &Target{Base: u}
			kill := Scenario{ID: "ATK-TEST-KILL", Threats: []string{"TM-DOS-1"}, Run: func(ctx context.Context, t *Target) Result {
				srv.Close()
				return Result{Verdict: tc.first, Evidence: "the attack"}
			}}
			ran := false
			after := Scenario{ID: "ATK-TEST-AFTER", Threats: []string{"TM-DOS-1"}, Run: func(ctx context.Context, t *Target) Result {
				ran = true
				return Passf("ran")
			}}
			reps := runScenarios(context.Background(), tgt, []Scenario{kill, after}, nil)
			require.Len(t, reps, 2)
			require.Equal(t, tc.first, reps[0].Result.Verdict)
			if tc.first == Fail {
				require.Contains(t, reps[0].Result.Evidence, "the attack [after this scenario the target stopped answering")
			}
			require.False(t, ran, "a scenario ran against a target that did not answer")
			require.Equal(t, CouldNotRun, reps[1].Result.Verdict)
			require.Contains(t, reps[1].Result.Evidence, "not attacked: target unreachable")
			require.Equal(t, tc.wantCode, ExitCode(reps))
		})
	}
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
	remote := 0
	for _, sc := range Catalog() {
		require.True(t, strings.HasPrefix(sc.ID, "ATK-"), sc.ID)
		require.False(t, seen[sc.ID], "duplicate scenario %s", sc.ID)
		seen[sc.ID] = true
		require.NotEmpty(t, sc.Title, sc.ID)
		require.NotEmpty(t, sc.Threats, sc.ID)
		require.NotNil(t, sc.Run, sc.ID)
		if sc.Mode == RemoteSafe {
			remote++
			require.NotEmpty(t, sc.Bounds, "%s: a remote-safe scenario states its load", sc.ID)
			require.Empty(t, sc.LocalOnly, sc.ID)
		} else {
			require.NotEmpty(t, sc.LocalOnly, "%s: a local-only scenario says why it cannot run against a deployment", sc.ID)
			require.Empty(t, sc.Bounds, "%s: a local-only scenario has no remote bounds", sc.ID)
		}
	}
	// At least 15 of the catalog run after a deploy (issue 23).
	require.GreaterOrEqual(t, remote, 15, "remote-safe scenarios")
}
