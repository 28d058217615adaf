package attacks

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Local gives local-only scenarios handles on the relay's process. It is
// nil when the target is a remote deployment.
type Local struct {
	// Binary is the path of the shipped build of cmd/relay.
	Binary string
	// TestHooks returns the path of a build with -tags relay_testhooks
	// ("" if none), building it on first use: only ATK-PANIC needs one, and
	// a run that leaves it out (a mutant's checks) builds nothing. nil: none.
	TestHooks func() (string, error)
	// ExtraFlags are appended to every process Start launches. Later flags
	// win, so a tester removes a defence for every scenario at once, e.g.
	// "--read-header-timeout=1h", to watch the scenarios that prove it fail.
	ExtraFlags []string
	// Main is the process behind Target.Base, if this package started it.
	Main *Process
	// TempDir is scratch space that outlives no test.
	TempDir string
	// NATSURL is a NATS server with JetStream for the cluster scenarios,
	// which start relays of their own in cluster mode against it (each under
	// its own --cluster-name); empty skips them.
	NATSURL string
	// SecureNATS starts a NATS server of its own in operator mode that
	// trusts only credentials issued for ids in cluster name, one .creds
	// file per id with that instance's permissions (docs/cluster.md,
	// Permissions), and returns its URL and the files by id. nil skips the
	// scenarios that need it.
	SecureNATS func(name string, ids []string) (url string, creds map[string]string, err error)
	// TLSFlags serve the harness's static test certificate (--tls-cert F
	// --tls-key K); nil when it has none. TLS scenarios that need a relay of
	// their own, e.g. with another environment, start it with StartTLS.
	TLSFlags []string

	mu      sync.Mutex
	started []*Process
}

// Started lists every process Start and StartBinary launched, so a failing
// test can show their logs.
func (l *Local) Started() []*Process {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Process(nil), l.started...)
}

// budgetsSettled is the end-of-scenario budget conservation check: every
// relay started since the index since was stopped with its queued bytes at
// zero (Process.Stop), and the shared main relay, still running, comes
// back to zero now that the scenario's clients are gone.
func (l *Local) budgetsSettled(since int) error {
	for _, p := range l.Started()[since:] {
		if err := p.BudgetErr(); err != nil {
			return fmt.Errorf("relay %s: %w", p.Addr, err)
		}
	}
	if l.Main != nil && !l.Main.Exited() {
		if err := l.Main.queuedBytesSettle(); err != nil {
			return fmt.Errorf("main relay %s: %w", l.Main.Addr, err)
		}
	}
	return nil
}

// Start launches another relay from the shipped binary:
// `relay serve --insecure-listen 127.0.0.1:0 FLAGS... ExtraFlags...`.
func (l *Local) Start(ctx context.Context, flags ...string) (*Process, error) {
	return l.StartBinary(ctx, l.Binary, flags...)
}

// StartBinary is Start with another build of the relay.
func (l *Local) StartBinary(ctx context.Context, bin string, flags ...string) (*Process, error) {
	args := append([]string{"serve", "--insecure-listen", "127.0.0.1:0"}, withMetrics(flags)...)
	args = append(args, l.ExtraFlags...)
	p, err := StartProcess(ctx, bin, args...)
	if p != nil {
		l.mu.Lock()
		l.started = append(l.started, p)
		l.mu.Unlock()
	}
	return p, err
}

// StartTLS launches a relay in static-certificate mode with env added to
// the inherited environment: `relay serve TLSFlags... --https-listen
// 127.0.0.1:0 FLAGS... ExtraFlags...`. It fails when there is no
// certificate (TLSFlags is nil).
func (l *Local) StartTLS(ctx context.Context, env []string, flags ...string) (*Process, error) {
	if len(l.TLSFlags) == 0 {
		return nil, errNoTLSFlags
	}
	args := append([]string{"serve"}, l.TLSFlags...)
	args = append(append(append(args, "--https-listen", "127.0.0.1:0"), withMetrics(flags)...), l.ExtraFlags...)
	p, err := StartProcessEnv(ctx, env, l.Binary, args...)
	if p != nil {
		l.mu.Lock()
		l.started = append(l.started, p)
		l.mu.Unlock()
	}
	return p, err
}

// withMetrics adds a loopback metrics listener to flags unless they name
// one: every relay this package starts can then be read for the budget
// conservation check (Process.Stop) and by scenarios that count drops.
func withMetrics(flags []string) []string {
	for _, f := range flags {
		if f == "--metrics-listen" || strings.HasPrefix(f, "--metrics-listen=") {
			return flags
		}
	}
	return append(append([]string(nil), flags...), "--metrics-listen", "127.0.0.1:0")
}

// errNoTLSFlags: StartTLS was called on a Local without a certificate.
var errNoTLSFlags = errors.New("attacks: no static test certificate to start a TLS relay with")

// Process is a relay process started by this package. Its stderr (the JSON
// log) is captured line by line.
type Process struct {
	// Addr is the public listener's address from the "listening" log line.
	Addr string
	// URL is http://Addr.
	URL *url.URL

	cmd  *exec.Cmd
	done chan struct{}

	mu       sync.Mutex
	lines    []string
	waitErr  error
	exitCode int
	// budgetErr is what the budget conservation check in Stop found
	// (nil: it held, or it did not run).
	budgetErr error
}

// ErrNoListenLine reports that a started relay exited or timed out before
// logging its public listener's address.
var ErrNoListenLine = errors.New("attacks: relay did not log a public listening address")

// StartProcess runs bin with args and waits (up to 15 s or ctx) for its
// public "listening" log line and then its "started" line (every listener
// serving, so /healthz answers 200). It returns the process even when it failed
// to start listening, so the caller can read its log and exit code; it is
// then already stopped.
func StartProcess(ctx context.Context, bin string, args ...string) (*Process, error) {
	return StartProcessEnv(ctx, nil, bin, args...)
}

// StartProcessEnv is StartProcess with env ("KEY=value") added to the
// inherited environment; later entries win, so env overrides it. The
// lame-duck window is off (RELAY_DRAIN_DELAY=0s) unless env sets it: Stop
// would otherwise wait it out for every relay a scenario starts.
func StartProcessEnv(ctx context.Context, env []string, bin string, args ...string) (*Process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "RELAY_DRAIN_DELAY=0s"), env...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{}), exitCode: -1}
	addrc := make(chan string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		addr := ""
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			if a, ok := listeningAddr(line, "public"); ok && addr == "" {
				addr = a
			}
			// Ready once it has said "started": the listeners are logged
			// as each starts, and /healthz answers 503 until all serve.
			if addr != "" && isStartedLine(line) {
				select {
				case addrc <- addr:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		<-scanDone // Wait must not close the pipe before the log is read
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.exitCode = cmd.ProcessState.ExitCode()
		p.mu.Unlock()
		close(p.done)
	}()
	timer := time.NewTimer(15 * time.Second)
	defer timer.Stop()
	select {
	case a := <-addrc:
		p.Addr = a
		p.URL = &url.URL{Scheme: "http", Host: a}
		return p, nil
	case <-p.done:
		return p, fmt.Errorf("%w (exit code %d)", ErrNoListenLine, p.ExitCode())
	case <-timer.C:
	case <-ctx.Done():
	}
	p.Kill()
	return p, ErrNoListenLine
}

// isStartedLine reports whether line is the relay's {"event":"started"},
// logged once every listener serves.
func isStartedLine(line string) bool {
	var m struct {
		Event string `json:"event"`
	}
	return json.Unmarshal([]byte(line), &m) == nil && m.Event == "started"
}

// listeningAddr parses {"event":"listening","listener":NAME,"addr":A}.
func listeningAddr(line, listener string) (string, bool) {
	var m struct {
		Event    string `json:"event"`
		Listener string `json:"listener"`
		Addr     string `json:"addr"`
	}
	if json.Unmarshal([]byte(line), &m) != nil || m.Event != "listening" || m.Listener != listener || m.Addr == "" {
		return "", false
	}
	return m.Addr, true
}

// Log returns a copy of the stderr lines captured so far.
func (p *Process) Log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// Pid is the process id (for per-process CPU accounting by harnesses).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits for the process to exit or ctx to end.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit status, or -1 while running or when killed by a signal.
func (p *Process) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitCode
}

// Stop sends SIGTERM and waits up to 10 s for a clean exit, then kills.
// It returns the exit code (-1 if it had to be killed).
//
// First, on a relay with a metrics listener, it runs the budget
// conservation check (TM-DOS-8): whoever stops a relay has closed its
// clients, so relay_queued_bytes must come back to exactly zero; what
// the check found is BudgetErr.
func (p *Process) Stop() int {
	if p.Exited() {
		return p.ExitCode()
	}
	if err := p.queuedBytesSettle(); err != nil {
		p.mu.Lock()
		p.budgetErr = err
		p.mu.Unlock()
	}
	_ = p.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.Wait(ctx) != nil {
		p.Kill()
	}
	return p.ExitCode()
}

// Kill kills the process and waits for it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// LogText is the captured log joined by newlines.
func (p *Process) LogText() string { return strings.Join(p.Log(), "\n") }

// BudgetErr is what the budget conservation check of Stop found: nil when
// relay_queued_bytes came back to zero, or when the check did not run.
func (p *Process) BudgetErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.budgetErr
}

// QueuedBytesSettled is the budget conservation check (TM-DOS-8) for a
// relay started outside a Local (the cluster tests' instances): with its
// clients gone, relay_queued_bytes must read exactly 0 within a few
// seconds. nil also when p has no metrics listener.
func (p *Process) QueuedBytesSettled() error { return p.queuedBytesSettle() }

// Metric reads one series from p's metrics listener (started with
// --metrics-listen 127.0.0.1:0), e.g.
// `relay_cluster_links_lost_total{reason="slow_consumer"}`.
func (p *Process) Metric(ctx context.Context, series string) (float64, error) {
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return 0, err
	}
	return m.value(ctx, series)
}

// budgetSettle bounds how long the queued bytes may take to reach zero
// once the clients are gone: each closing phone's writer finishes its
// write (its socket is closed, so it fails at once) and releases the
// charge. Polled, so a healthy relay passes in a few milliseconds.
const budgetSettle = 5 * time.Second

// queuedBytesSettle polls relay_queued_bytes on p's metrics listener until
// it reads exactly 0. A relay without a metrics listener is not checked.
func (p *Process) queuedBytesSettle() error {
	if _, ok := metricsAddr(p); !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), budgetSettle+5*time.Second)
	defer cancel()
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return nil
	}
	last, lastErr := -1.0, error(nil)
	if pollUntil(ctx, budgetSettle, 10*time.Millisecond, func() bool {
		last, lastErr = m.value(ctx, mQueuedBytes)
		return lastErr == nil && last == 0
	}) {
		return nil
	}
	if lastErr != nil {
		return fmt.Errorf("budget conservation (TM-DOS-8): %s unreadable: %w", mQueuedBytes, lastErr)
	}
	return fmt.Errorf("budget conservation (TM-DOS-8, byteBudget in internal/relay/outbox.go): %s = %v, not 0, %v after the scenario's clients were gone: a queued item's charge was never released", mQueuedBytes, last, budgetSettle)
}
