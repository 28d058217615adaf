package loadbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a server process under measurement: the relay or the forwarder.
type proc struct {
	name string
	addr string // host:port it listens on
	// memURL serves the process's Go memory figures in Prometheus text.
	memURL string
	cmd    *exec.Cmd
	pid    int
	out    bytes.Buffer
}

// startProc starts argv with env added, pinned to cpu (-1: not pinned), and
// waits until addr accepts TCP connections.
func startProc(ctx context.Context, name, addr string, cpu int, env []string, argv ...string) (*proc, error) {
	p := &proc{name: name, addr: addr}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlives the harness
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd, p.pid = cmd, cmd.Process.Pid
	ownPIDs.add(p.pid)
	if cpu >= 0 {
		pinProcess(p.pid, cpu)
	}
	wait := 15 * time.Second
	if filepath.Base(argv[0]) == "valgrind" {
		wait = 3 * time.Minute // a Go binary starts slowly under callgrind
	}
	deadline := time.Now().Add(wait)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("%s did not listen on %s: %v; output: %s", name, addr, err, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cpu >= 0 {
		pinProcess(p.pid, cpu) // threads started since the first pass
	}
	return p, nil
}

// stop ends the process (SIGTERM, then SIGKILL after 3 s) and reaps it.
func (p *proc) stop() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	defer ownPIDs.remove(p.pid)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// flushProfile asks a relay built with -tags relay_cpuprofile to write its
// CPU profile (SIGUSR1) and waits until the file is complete.
func (p *proc) flushProfile(path string) error {
	if err := p.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	var last int64 = -1
	for range 100 {
		time.Sleep(100 * time.Millisecond)
		st, err := os.Stat(path)
		if err == nil && st.Size() > 0 && st.Size() == last {
			return nil
		}
		if err == nil {
			last = st.Size()
		}
	}
	return fmt.Errorf("no CPU profile in %s (is the relay built with -tags relay_cpuprofile?)", path)
}

// kill ends the process at once (SIGKILL) and reaps it.
func (p *proc) kill() {
	if p == nil || p.cmd == nil || p.cmd.Process == nil {
		return
	}
	defer ownPIDs.remove(p.pid)
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// pinProcess sets the CPU affinity of every thread of pid. Threads the
// process starts later inherit it from their creator.
func pinProcess(pid, cpu int) {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		_ = unix.SchedSetaffinity(pid, &set)
		return
	}
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			_ = unix.SchedSetaffinity(tid, &set)
		}
	}
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's CPU times. Linux
// exports 100 on every architecture Go supports.
const clockTick = 100

// cpuSeconds is the process's user+system CPU time (all threads).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is parenthesised and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseUint(f[12], 10, 64) // field 15, stime
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat")
	}
	return float64(ut+st) / clockTick, nil
}

// syscalls is the process's read and write system calls so far
// (/proc/PID/io syscr + syscw: every read, write, recv and send family
// call; not epoll or futex).
func syscalls(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		for _, key := range []string{"syscr: ", "syscw: "} {
			if v, ok := strings.CutPrefix(line, key); ok {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// rssBytes is the process's resident set size.
func rssBytes(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// ownPIDs are the server processes this harness started and has not yet
// reaped: with the harness itself, the CPU the run's own work takes.
var ownPIDs = &pidSet{m: map[int]bool{}}

type pidSet struct {
	mu sync.Mutex
	m  map[int]bool
}

func (s *pidSet) add(pid int)    { s.mu.Lock(); s.m[pid] = true; s.mu.Unlock() }
func (s *pidSet) remove(pid int) { s.mu.Lock(); delete(s.m, pid); s.mu.Unlock() }

// ownCPU is the CPU seconds (user+system, all threads) of the harness and
// of every server process it runs, as far as they have used them so far.
func ownCPU() float64 {
	total, _ := cpuSeconds(os.Getpid())
	ownPIDs.mu.Lock()
	defer ownPIDs.mu.Unlock()
	for pid := range ownPIDs.m {
		c, _ := cpuSeconds(pid)
		total += c
	}
	return total
}

// machineBusy reads /proc/stat's per-CPU busy and total jiffies.
func machineBusy() (busy, total []uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var sum, idle uint64
		for k, s := range f[1:] {
			v, _ := strconv.ParseUint(s, 10, 64)
			sum += v
			if k == 3 || k == 4 { // idle, iowait
				idle += v
			}
		}
		busy, total = append(busy, sum-idle), append(total, sum)
	}
	return busy, total
}

// loadAvg is the first field of /proc/loadavg.
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// freeAddr returns a loopback address with a free port.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// raiseFileLimit lifts the soft open-file limit to the hard one (10,000
// connections need 10,000 descriptors on each side) and returns it.
func raiseFileLimit() uint64 {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &r) != nil {
		return 0
	}
	r.Cur = r.Max
	_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &r)
	return r.Cur
}

// buildRelay compiles ./cmd/relay of the module containing dir into out.
func buildRelay(ctx context.Context, moduleDir, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./cmd/relay") // as make build
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = moduleDir
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/relay: %v: %s", err, b)
	}
	return nil
}

// moduleRoot finds the directory holding go.mod, upwards from the working
// directory.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}
