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

// Insecure FCM credentials: the service-account key can message every
// installation of the app. The real binary started with --fcm-credentials
// naming a key file that is group- or world-accessible, not a regular file,
// (when the scenario runs as root and can chown) owned by another user, or
// reached through symlinks to a loose file or through a directory its group
// may write, must refuse to start: exit 2, one stderr line naming the file
// and saying it is insecure, never a byte of the key, and before binding
// any port (the scenario holds --insecure-listen's port itself; the
// calibration run shows a relay that gets as far as binding fails
// differently). The file's mode is left alone. A 0600 and a 0400 file
// start, and so does a Kubernetes secret mount (key -> ..data/key) of a
// 0400 key.
func fcmCredentials() Scenario {
	return Scenario{
		ID:        "ATK-FCM-CREDENTIALS",
		Title:     "FCM key file at 0644/0640/0604/0660, a symlink to a loose key or through a group-writable directory, a directory or another owner's: exit 2, one line naming it, no key bytes, before any port; 0600/0400 and a Kubernetes secret mount start",
		Threats:   []string{"TM-OUT-5"},
		Mode:      LocalOnly,
		LocalOnly: "it starts relays with FCM credential files it makes insecure on this machine's disk",
		Run:       runFCMCredentials,
	}
}

func runFCMCredentials(ctx context.Context, t *Target) Result {
	l, g, skip := localFakeGoogle(t)
	if skip != nil {
		return *skip
	}
	defer g.Close()
	root, err := os.MkdirTemp(l.TempDir, "fcm-creds-")
	if err != nil {
		return Failf("scratch dir: %v", err)
	}
	defer os.RemoveAll(root)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Failf("hold a port: %v", err)
	}
	defer ln.Close()
	held := ln.Addr().String()
	key := func(mode fs.FileMode) (string, error) {
		p, err := g.writeCredentials(root)
		if err != nil {
			return "", err
		}
		return p, os.Chmod(p, mode)
	}
	start := func(creds, listen string) (*Process, error) {
		// A later --insecure-listen overrides Start's own.
		return l.Start(ctx, "--fcm-credentials", creds, "--fcm-endpoint", g.base, "--insecure-listen", listen)
	}
	secrets := []string{"PRIVATE KEY", "BEGIN", g.email, fakeKeyID, g.project}

	// Positive controls: 0600 and 0400 start.
	for _, mode := range []fs.FileMode{0o600, 0o400} {
		good, err := key(mode)
		if err != nil {
			return Failf("write key: %v", err)
		}
		p, err := start(good, "127.0.0.1:0")
		if err != nil {
			return Failf("a %#o key file did not start: %v: %s", mode, err, tail(logText(p), 300))
		}
		p.Stop()
	}
	// A Kubernetes secret mount (key -> ..data/key, ..data -> ..2026_...,
	// the volume's root 1777) with a 0400 key starts.
	k8sLink, _, err := k8sSecret(g, root, 0o400, 0o755)
	if err != nil {
		return Failf("kubernetes layout: %v", err)
	}
	if p, err := start(k8sLink, "127.0.0.1:0"); err != nil {
		return Failf("a Kubernetes secret mount with a 0400 key did not start: %v: %s", err, tail(logText(p), 300))
	} else {
		p.Stop()
	}
	// Calibration: a good key with the held port fails on the bind.
	good, err := key(0o600)
	if err != nil {
		return Failf("write key: %v", err)
	}
	p, _ := start(good, held)
	bindLine, code := refusalLine(p)
	if code != 1 || bindLine == "" || looksLikeCredentialsRefusal(bindLine, good) {
		return Failf("calibration: a 0600 key with the port held exited %d with %q, want exit 1 (runtime failure) on the bind", code, tail(logText(p), 200))
	}

	type attempt struct {
		name string
		path string
		file string // the real file, whose mode must be unchanged
		mode fs.FileMode
	}
	var cases []attempt
	for _, mode := range []fs.FileMode{0o644, 0o640, 0o604, 0o660} {
		f, err := key(mode)
		if err != nil {
			return Failf("write key: %v", err)
		}
		cases = append(cases, attempt{fmt.Sprintf("%#o", mode), f, f, mode})
	}
	// Symlinks are followed (a Kubernetes secret mount) and what they
	// reach is checked: a symlink to a loose file, a mount whose key is
	// loose, and a mount through a directory its group may write are
	// refused. The mount with a 0400 key starts (the positive control
	// above the loop).
	target, err := key(0o644)
	if err != nil {
		return Failf("write key: %v", err)
	}
	link := filepath.Join(root, "link-"+randHex(4)+".json")
	if err := os.Symlink(target, link); err != nil {
		return Failf("symlink: %v", err)
	}
	cases = append(cases, attempt{"symlink to 0644", link, target, 0o644})
	for _, m := range []struct {
		name       string
		key, tsDir fs.FileMode
	}{{"kubernetes mount, key 0604", 0o604, 0o755}, {"kubernetes mount through a 0775 directory", 0o400, 0o775}} {
		l, f, err := k8sSecret(g, root, m.key, m.tsDir)
		if err != nil {
			return Failf("kubernetes layout: %v", err)
		}
		cases = append(cases, attempt{m.name, l, f, m.key})
	}
	dir := filepath.Join(root, "dir-"+randHex(4)+".json")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return Failf("mkdir: %v", err)
	}
	cases = append(cases, attempt{"directory", dir, "", 0})
	ownerNote := "another owner not tried (needs root to chown)"
	if os.Geteuid() == 0 {
		f, err := key(0o600)
		if err != nil {
			return Failf("write key: %v", err)
		}
		if err := os.Chown(f, 65534, 65534); err != nil {
			return Failf("chown: %v", err)
		}
		cases = append(cases, attempt{"0600 owned by uid 65534", f, f, 0o600})
		ownerNote = "another owner's 0600 file refused"
	}

	var seen []string
	for _, c := range cases {
		p, err := start(c.path, held)
		if err == nil {
			p.Stop()
			return Failf("key file %s (%s): the relay started and listened on %s", c.name, c.path, p.Addr)
		}
		line, code := refusalLine(p)
		switch {
		case code != 2:
			return Failf("key file %s: exit code %d, want 2; stderr: %q", c.name, code, tail(logText(p), 300))
		case len(nonEmpty(p.Log())) != 1:
			return Failf("key file %s: %d stderr lines, want one: %q", c.name, len(nonEmpty(p.Log())), tail(logText(p), 300))
		case !looksLikeCredentialsRefusal(line, c.path) && strings.Contains(line, "address already in use"):
			return Failf("key file %s accepted: the relay went on to bind the port this scenario holds (%q)", c.name, line)
		case !looksLikeCredentialsRefusal(line, c.path):
			return Failf("key file %s: refusal %q does not name %s as insecure", c.name, line, c.path)
		case strings.Contains(line, held) || strings.Contains(line, "address already in use"):
			return Failf("key file %s: the refusal mentions the listener, so the port was tried first: %q", c.name, line)
		}
		for _, s := range secrets {
			if strings.Contains(p.LogText(), s) {
				return Failf("key file %s: the refusal quotes the key file (%q)", c.name, s)
			}
		}
		if c.file != "" {
			if fi, err := os.Lstat(c.file); err != nil || fi.Mode().Perm() != c.mode {
				return Failf("key file %s: the relay changed its mode (now %v, err %v)", c.name, modeOf(fi), err)
			}
		}
		seen = append(seen, c.name)
	}
	return Passf("key files %s: each exit 2 with one line naming the file as insecure, no key bytes, the held port never tried, mode unchanged; %s; 0600, 0400 and a Kubernetes secret mount (0400) started; with the port held a good key fails differently (%q)",
		strings.Join(seen, ", "), ownerNote, tail(bindLine, 90))
}

// k8sSecret lays out a Kubernetes secret volume in root as kubelet's atomic
// writer does: the volume's root at 1777 (a tmpfs), a timestamped directory
// (tsDir) holding the key (key), ..data -> that directory, and the key's
// name -> ..data/name. It returns the path the relay is given and the key.
func k8sSecret(g *fakeGoogle, root string, key, tsDir fs.FileMode) (link, file string, err error) {
	vol := filepath.Join(root, "vol-"+randHex(4))
	ts := "..2026_01_02_03_04_05.123456789"
	if err := os.Mkdir(vol, 0o700); err != nil {
		return "", "", err
	}
	if err := os.Chmod(vol, 0o777|fs.ModeSticky); err != nil {
		return "", "", err
	}
	if err := os.Mkdir(filepath.Join(vol, ts), 0o755); err != nil {
		return "", "", err
	}
	if file, err = g.writeCredentials(filepath.Join(vol, ts)); err != nil {
		return "", "", err
	}
	if err := os.Chmod(file, key); err != nil {
		return "", "", err
	}
	if err := os.Chmod(filepath.Join(vol, ts), tsDir); err != nil {
		return "", "", err
	}
	if err := os.Symlink(ts, filepath.Join(vol, "..data")); err != nil {
		return "", "", err
	}
	link = filepath.Join(vol, filepath.Base(file))
	return link, file, os.Symlink(filepath.Join("..data", filepath.Base(file)), link)
}

// looksLikeCredentialsRefusal: the line names the file and says the FCM
// credentials are insecure.
func looksLikeCredentialsRefusal(line, path string) bool {
	l := strings.ToLower(line)
	return strings.Contains(line, path) && strings.Contains(l, "credentials") && strings.Contains(l, "insecure")
}
