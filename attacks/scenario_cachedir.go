package attacks

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Insecure certificate cache: the real binary in --domain mode refuses to
// start (exit 2, one stderr line naming the cache and saying it is
// insecure) when the cache directory has any group or world bit or is a
// symlink, and it refuses before binding any port. To prove the ordering,
// the scenario holds the --https-listen and --http-listen ports itself: a
// relay that bound first would fail with a different message (the
// calibration run shows which). The mode is left as it was: the relay never
// chmods. A 0700 cache starts and listens.
//
// The keys are files inside the cache, so the entries are checked too: a
// 0644 key file in an otherwise 0700 cache is refused the same way, the
// line naming the file. The 0700 control holds a 0600 file, so a relay
// that refused any file at all would fail it.
//
// The ACME directory is https://127.0.0.1:1/dir: nothing listens there and
// nothing may contact it before the cache check.
func cacheDir() Scenario {
	return Scenario{
		ID:      "ATK-CACHE-DIR",
		Title:   "Cache dir at 0750/0755/0777/0770, a symlink, or holding a 0644 file: exit 2, one line naming it, before any port; 0700 starts",
		Threats: []string{"TM-CERT-1"},
		Mode:    LocalOnly,
		Run:     runCacheDir,
	}
}

// cacheDomain is the autocert domain; never resolved or issued.
const cacheDomain = "relay.example.test"

func cacheFlags(dir, httpsAddr, httpAddr string) []string {
	return []string{"serve", "--domain", cacheDomain, "--cert-cache", dir,
		"--https-listen", httpsAddr, "--http-listen", httpAddr,
		"--acme-directory", "https://127.0.0.1:1/dir"}
}

func runCacheDir(ctx context.Context, t *Target) Result {
	l, skip := localOrSkip(t)
	if skip != nil {
		return *skip
	}
	root, err := os.MkdirTemp(l.TempDir, "cache-dir-")
	if err != nil {
		return Failf("scratch dir: %v", err)
	}
	defer os.RemoveAll(root)
	start := func(flags ...string) (*Process, error) {
		p, err := StartProcess(ctx, l.Binary, append(flags, l.ExtraFlags...)...)
		if p != nil {
			l.mu.Lock()
			l.started = append(l.started, p)
			l.mu.Unlock()
		}
		return p, err
	}
	mkdir := func(name string, mode fs.FileMode) (string, error) {
		d := filepath.Join(root, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			return "", err
		}
		return d, os.Chmod(d, mode) // Mkdir's mode is narrowed by umask
	}

	// Held ports: the relay must not get as far as binding them.
	var held []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return Failf("hold a port: %v", err)
		}
		defer ln.Close()
		held = append(held, ln.Addr().String())
	}

	// Positive control: a 0700 cache holding a 0600 key file starts and
	// listens.
	good, err := mkdir("good", 0o700)
	if err != nil {
		return Failf("mkdir: %v", err)
	}
	if _, err := writeFileMode(filepath.Join(good, cacheKeyFile), 0o600); err != nil {
		return Failf("write key file: %v", err)
	}
	p, err := start(cacheFlags(good, "127.0.0.1:0", "127.0.0.1:0")...)
	if err != nil {
		return Failf("0700 cache did not start: %v: %s", err, tail(logText(p), 300))
	}
	p.Stop()

	// Calibration: the same good cache with the held ports fails on the
	// bind, with a message that is not the cache's.
	p, _ = start(cacheFlags(good, held[0], held[1])...)
	bindLine, code := refusalLine(p)
	if code != 2 || bindLine == "" || looksLikeCacheRefusal(bindLine, good) {
		return Failf("calibration: 0700 cache with held ports exited %d with %q, want exit 2 on the bind", code, tail(logText(p), 200))
	}

	cases := []struct {
		name string
		mode fs.FileMode
		link bool
	}{{"0750", 0o750, false}, {"0755", 0o755, false}, {"0777", 0o777, false}, {"0770", 0o770, false}, {"symlink to 0700", 0o700, true}}
	var seen []string
	for _, c := range cases {
		dir, err := mkdir("c"+strings.ReplaceAll(c.name, " ", "-"), c.mode)
		if err != nil {
			return Failf("mkdir: %v", err)
		}
		arg := dir
		if c.link {
			arg = dir + "-link"
			if err := os.Symlink(dir, arg); err != nil {
				return Failf("symlink: %v", err)
			}
		}
		p, err := start(cacheFlags(arg, held[0], held[1])...)
		if err == nil {
			p.Stop()
			return Failf("cache %s (%s): the relay started and listened on %s", c.name, arg, p.Addr)
		}
		line, code := refusalLine(p)
		if code != 2 {
			return Failf("cache %s: exit code %d, want 2; stderr: %q", c.name, code, tail(logText(p), 300))
		}
		if n := len(nonEmpty(p.Log())); n != 1 {
			return Failf("cache %s: %d stderr lines, want one: %q", c.name, n, tail(logText(p), 300))
		}
		if !looksLikeCacheRefusal(line, arg) {
			return Failf("cache %s: refusal %q does not name the insecure cache %s", c.name, line, arg)
		}
		if strings.Contains(line, held[0]) || strings.Contains(line, held[1]) || strings.Contains(line, "address already in use") {
			return Failf("cache %s: refusal mentions a listener, so a port was tried first: %q", c.name, line)
		}
		fi, err := os.Lstat(dir)
		if err != nil || fi.Mode().Perm() != c.mode {
			return Failf("cache %s: the relay changed the directory (now %v, err %v)", c.name, modeOf(fi), err)
		}
		if c.link {
			if li, err := os.Lstat(arg); err != nil || li.Mode()&fs.ModeSymlink == 0 {
				return Failf("cache %s: the symlink was replaced", c.name)
			}
		}
		seen = append(seen, c.name)
	}

	// A loose file inside an otherwise 0700 cache.
	loose, err := mkdir("loose-file", 0o700)
	if err != nil {
		return Failf("mkdir: %v", err)
	}
	file, err := writeFileMode(filepath.Join(loose, cacheKeyFile), 0o644)
	if err != nil {
		return Failf("write key file: %v", err)
	}
	p, err = start(cacheFlags(loose, held[0], held[1])...)
	if err == nil {
		p.Stop()
		return Failf("0700 cache holding a 0644 file: the relay started and listened on %s", p.Addr)
	}
	line, code := refusalLine(p)
	switch {
	case code != 2:
		return Failf("0700 cache holding a 0644 file: exit code %d, want 2; stderr: %q", code, tail(logText(p), 300))
	case len(nonEmpty(p.Log())) != 1:
		return Failf("0700 cache holding a 0644 file: %d stderr lines, want one: %q", len(nonEmpty(p.Log())), tail(logText(p), 300))
	case !looksLikeCacheRefusal(line, file):
		return Failf("0700 cache holding a 0644 file: refusal %q does not name the file %s as insecure", line, file)
	}
	if fi, err := os.Lstat(file); err != nil || fi.Mode().Perm() != 0o644 {
		return Failf("0644 file in the cache: the relay changed it (now %v, err %v)", modeOf(fi), err)
	}
	seen = append(seen, "0700 holding a 0644 file")

	return Passf("caches %s: each exit 2 with one line naming the cache (or the file) as insecure, ports held by the attacker never reached, mode unchanged; a 0700 cache holding a 0600 file started; with the ports held it fails differently (%q)",
		strings.Join(seen, ", "), tail(bindLine, 90))
}

// cacheKeyFile is named like the ACME account key autocert.DirCache keeps.
const cacheKeyFile = "acme_account+key"

// writeFileMode writes a small file with exactly mode (umask can only
// narrow the mode given to OpenFile) and returns its path.
func writeFileMode(path string, mode fs.FileMode) (string, error) {
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		return "", err
	}
	return path, os.Chmod(path, mode)
}

// refusalLine is the last non-empty stderr line and the exit code of a
// process that has exited.
func refusalLine(p *Process) (string, int) {
	if p == nil {
		return "", -1
	}
	_ = p.Wait(context.Background())
	lines := nonEmpty(p.Log())
	if len(lines) == 0 {
		return "", p.ExitCode()
	}
	return lines[len(lines)-1], p.ExitCode()
}

// looksLikeCacheRefusal: the line names the cache path and says it is an
// insecure certificate cache.
func looksLikeCacheRefusal(line, dir string) bool {
	l := strings.ToLower(line)
	return strings.Contains(line, dir) && strings.Contains(l, "cache") && strings.Contains(l, "insecure")
}

func nonEmpty(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

func logText(p *Process) string {
	if p == nil {
		return ""
	}
	return p.LogText()
}

func modeOf(fi fs.FileInfo) string {
	if fi == nil {
		return "missing"
	}
	return fmt.Sprintf("%#o", fi.Mode().Perm())
}
