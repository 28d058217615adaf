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
// The keys are files inside the cache, so the entries are checked too:
// every group and world bit is tried alone on the directory and on a key
// file in an otherwise 0700 cache, each refused the same way, the line
// naming the directory or the file. The 0700 control holds a 0600 file, so a relay
// that refused any file at all would fail it.
//
// The ACME directory is https://127.0.0.1:1/dir: nothing listens there and
// nothing may contact it before the cache check.
func cacheDir() Scenario {
	return Scenario{
		ID:        "ATK-CACHE-DIR",
		Title:     "Cache dir or a file in it with any group or world bit, or a symlink: exit 2, one line naming it, before any port; 0700 starts",
		Threats:   []string{"TM-CERT-1"},
		Mode:      LocalOnly,
		LocalOnly: "it starts relays over certificate-cache directories it makes insecure on this machine's disk; a deployment's disk is not reachable over the network",
		Run:       runCacheDir,
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
	if code != 1 || bindLine == "" || looksLikeCacheRefusal(bindLine, good) {
		return Failf("calibration: 0700 cache with held ports exited %d with %q, want exit 1 (runtime failure) on the bind", code, tail(logText(p), 200))
	}

	// refused starts a relay on cache arg and requires the refusal: exit 2,
	// one stderr line naming named as an insecure cache, no port tried.
	refused := func(what, arg, named string) error {
		p, err := start(cacheFlags(arg, held[0], held[1])...)
		if err == nil {
			p.Stop()
			return fmt.Errorf("cache check (CheckCacheDir): %s: the relay started and listened on %s", what, p.Addr)
		}
		line, code := refusalLine(p)
		switch {
		case code != 2:
			return fmt.Errorf("%s: exit code %d, want 2; stderr: %q", what, code, tail(logText(p), 300))
		case len(nonEmpty(p.Log())) != 1:
			return fmt.Errorf("%s: %d stderr lines, want one: %q", what, len(nonEmpty(p.Log())), tail(logText(p), 300))
		case !looksLikeCacheRefusal(line, named) && strings.Contains(line, "address already in use"):
			return fmt.Errorf("cache check (CheckCacheDir): %s accepted: the relay went on to bind the port this scenario holds (%q)", what, line)
		case !looksLikeCacheRefusal(line, named):
			return fmt.Errorf("%s: refusal %q does not name %s as an insecure cache", what, line, named)
		case strings.Contains(line, held[0]) || strings.Contains(line, held[1]) || strings.Contains(line, "address already in use"):
			return fmt.Errorf("%s: refusal mentions a listener, so a port was tried first: %q", what, line)
		}
		return nil
	}

	// Every group and world bit, one at a time, on the directory and on a
	// key file inside an otherwise 0700 cache: the rule is "any such bit",
	// so a check that let one through (0750 tried, 0710 missed; 0644
	// tried, 0640 missed) fails here.
	var dirModes, fileModes []string
	for _, bit := range []fs.FileMode{0o040, 0o020, 0o010, 0o004, 0o002, 0o001} {
		mode := 0o700 | bit
		dir, err := mkdir(fmt.Sprintf("dir-%04o", mode), mode)
		if err != nil {
			return Failf("mkdir: %v", err)
		}
		if err := refused(fmt.Sprintf("cache dir %04o", mode), dir, dir); err != nil {
			return Failf("%v", err)
		}
		if fi, err := os.Lstat(dir); err != nil || fi.Mode().Perm() != mode {
			return Failf("cache dir %04o: the relay changed the directory (now %v, err %v)", mode, modeOf(fi), err)
		}
		dirModes = append(dirModes, fmt.Sprintf("%04o", mode))

		fmode := 0o600 | bit
		in, err := mkdir(fmt.Sprintf("file-%04o", fmode), 0o700)
		if err != nil {
			return Failf("mkdir: %v", err)
		}
		file, err := writeFileMode(filepath.Join(in, cacheKeyFile), fmode)
		if err != nil {
			return Failf("write key file: %v", err)
		}
		if err := refused(fmt.Sprintf("0700 cache holding a %04o file", fmode), in, file); err != nil {
			return Failf("%v", err)
		}
		if fi, err := os.Lstat(file); err != nil || fi.Mode().Perm() != fmode {
			return Failf("%04o file in the cache: the relay changed it (now %v, err %v)", fmode, modeOf(fi), err)
		}
		fileModes = append(fileModes, fmt.Sprintf("%04o", fmode))
	}

	// A symlink to a 0700 directory.
	target, err := mkdir("link-target", 0o700)
	if err != nil {
		return Failf("mkdir: %v", err)
	}
	link := target + "-link"
	if err := os.Symlink(target, link); err != nil {
		return Failf("symlink: %v", err)
	}
	if err := refused("cache symlink to a 0700 dir", link, link); err != nil {
		return Failf("%v", err)
	}
	if li, err := os.Lstat(link); err != nil || li.Mode()&fs.ModeSymlink == 0 {
		return Failf("cache symlink: the symlink was replaced")
	}
	seen := []string{"dir " + strings.Join(dirModes, "/"), "a 0700 dir holding a " + strings.Join(fileModes, "/") + " file", "a symlink"}

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
