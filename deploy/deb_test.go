package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// The .deb tests run from `make deb`, which builds the package and passes
// it (RELAY_DEB), the pinned nfpm (RELAY_NFPM) and the build's inputs
// (RELAY_DEB_VERSION, RELAY_DEB_ARCH, RELAY_DEB_BINARY, SOURCE_DATE_EPOCH).
func debEnv(t *testing.T) (deb string) {
	t.Helper()
	deb = os.Getenv("RELAY_DEB")
	if deb == "" {
		t.Skip("run by make deb (RELAY_DEB names the package)")
	}
	for _, tool := range []string{"dpkg-deb", "dpkg"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s (Debian's dpkg) inspects the package", tool)
	}
	return deb
}

// nfpmContent is one entry of deploy/nfpm.yaml's contents.
type nfpmContent struct {
	Src      string `yaml:"src"`
	Dst      string `yaml:"dst"`
	Type     string `yaml:"type"`
	FileInfo struct {
		Mode int `yaml:"mode"`
	} `yaml:"file_info"`
}

func nfpmContents(t *testing.T) []nfpmContent {
	t.Helper()
	b, err := os.ReadFile("nfpm.yaml")
	require.NoError(t, err)
	var c struct {
		Contents []nfpmContent `yaml:"contents"`
	}
	require.NoError(t, yaml.Unmarshal(b, &c))
	require.NotEmpty(t, c.Contents)
	return c.Contents
}

// TestDeb_Contents: dpkg-deb reads the package: its control fields, its one
// conffile (/etc/relay/relay.toml), its maintainer scripts; every file is
// root's with the mode nfpm.yaml gives, and byte for byte the repository's
// file (the binary: the one make built); the units it ships run
// /usr/bin/relay, which it ships.
func TestDeb_Contents(t *testing.T) {
	deb := debEnv(t)
	field := func(name string) string {
		out, err := exec.Command("dpkg-deb", "-f", deb, name).CombinedOutput()
		require.NoError(t, err, "%s", out)
		return strings.TrimSpace(string(out))
	}
	require.Equal(t, "relay", field("Package"))
	require.Equal(t, os.Getenv("RELAY_DEB_VERSION"), field("Version"))
	require.Equal(t, os.Getenv("RELAY_DEB_ARCH"), field("Architecture"))
	require.Contains(t, field("Depends"), "systemd")

	ctrl := t.TempDir()
	out, err := exec.Command("dpkg-deb", "-e", deb, ctrl).CombinedOutput()
	require.NoError(t, err, "%s", out)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	require.NoError(t, err)
	require.Equal(t, []string{"/etc/relay/relay.toml"}, strings.Fields(string(conffiles)))
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		b, err := os.ReadFile(filepath.Join(ctrl, s))
		require.NoError(t, err, s)
		src, err := os.ReadFile(filepath.Join("deb", s))
		require.NoError(t, err)
		require.Equal(t, string(src), string(b), s)
	}

	// The listing: owner, mode and path of every entry.
	out, err = exec.Command("dpkg-deb", "-c", deb).CombinedOutput()
	require.NoError(t, err, "%s", out)
	listed := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		require.GreaterOrEqual(t, len(f), 6, line)
		require.Equal(t, "root/root", f[1], line)
		listed[strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")] = f[0]
	}
	root := t.TempDir()
	out, err = exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, c := range nfpmContents(t) {
		perm, ok := listed[c.Dst]
		require.True(t, ok, "%s is not in the package", c.Dst)
		require.Equal(t, c.FileInfo.Mode, permBits(t, perm), "%s: mode %s", c.Dst, perm)
		if c.Type == "dir" {
			continue
		}
		src := c.Src
		if src == "${RELAY_DEB_BINARY}" {
			src = os.Getenv("RELAY_DEB_BINARY")
		}
		want, err := os.ReadFile(filepath.Join("..", src))
		require.NoError(t, err, src)
		got, err := os.ReadFile(filepath.Join(root, c.Dst))
		require.NoError(t, err, c.Dst)
		require.True(t, bytes.Equal(want, got), "%s differs from %s", c.Dst, src)
	}
	units, err := filepath.Glob(filepath.Join(root, "lib/systemd/system/relay-*"))
	require.NoError(t, err)
	require.Len(t, units, 5, "the three modes' units and the attack service and timer")
	for _, u := range units {
		if strings.HasSuffix(u, ".timer") {
			continue
		}
		m := regexp.MustCompile(`(?m)^ExecStart=(\S+)`).FindSubmatch(mustRead(t, u))
		require.NotNil(t, m, u)
		require.Equal(t, "/usr/bin/relay", string(m[1]), "%s runs the packaged binary", filepath.Base(u))
	}
}

// permBits turns "-rwxr-xr-x" into 0o755.
func permBits(t *testing.T, s string) int {
	t.Helper()
	require.Len(t, s, 10)
	m := 0
	for i, c := range s[1:] {
		if c != '-' {
			m |= 1 << (8 - i)
		}
	}
	return m
}

// TestDeb_InstallsIntoThrowawayRoot: dpkg --root installs the package into
// an empty root, running its postinst there (DPKG_ROOT): systemd-sysusers
// creates the relay and relay-attack users in the root's /etc/passwd,
// systemd-tmpfiles creates /var/lib/relay and its certs (0700, relay's) and
// /var/lib/relay-attack (0755, relay-attack's) whatever the mode; then
// systemd-analyze verify --root accepts every installed unit, its ExecStart
// resolved in the root: the installed /usr/bin/relay, without which
// verify fails (as the deploy/ units did against /usr/local/bin/relay before
// the package existed).
func TestDeb_InstallsIntoThrowawayRoot(t *testing.T) {
	deb := debEnv(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs make deb as root (dpkg --root sets owners)")
		}
		t.Skip("needs root to install into a throwaway root")
	}
	sa := systemdAnalyze(t)
	root := installDeb(t, deb)

	ids := map[string][2]int{}
	for _, line := range strings.Split(string(mustRead(t, filepath.Join(root, "etc/passwd"))), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 {
			continue
		}
		uid, _ := strconv.Atoi(f[2])
		gid, _ := strconv.Atoi(f[3])
		ids[f[0]] = [2]int{uid, gid}
		if f[0] == "relay" || f[0] == "relay-attack" {
			require.Equal(t, "/usr/sbin/nologin", f[6], line)
			require.Less(t, uid, 1000, "a system user: %s", line)
		}
	}
	require.Contains(t, ids, "relay")
	require.Contains(t, ids, "relay-attack")
	for dir, want := range map[string]struct {
		user string
		mode os.FileMode
	}{
		"var/lib/relay": {"relay", 0o700}, "var/lib/relay/certs": {"relay", 0o700}, "var/lib/relay-attack": {"relay-attack", 0o755},
	} {
		fi, err := os.Stat(filepath.Join(root, dir))
		require.NoError(t, err, "/%s", dir)
		require.True(t, fi.IsDir())
		require.Equal(t, want.mode, fi.Mode().Perm(), "/%s", dir)
		require.Equal(t, ids[want.user], fileOwner(t, fi), "/%s belongs to %s", dir, want.user)
	}

	units, err := filepath.Glob(filepath.Join(root, "lib/systemd/system/relay-*"))
	require.NoError(t, err)
	var names []string
	for _, u := range units {
		names = append(names, filepath.Base(u))
	}
	verify := func() ([]byte, error) {
		return exec.Command(sa, append([]string{"verify", "--no-pager", "--root=" + root}, names...)...).CombinedOutput()
	}
	out, err := verify()
	require.NoError(t, err, "systemd-analyze verify --root %v:\n%s", names, out)
	require.Empty(t, strings.TrimSpace(string(out)), "systemd-analyze verify warned")

	bin := filepath.Join(root, "usr/bin/relay")
	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, "the installed binary runs: %s", out)
	require.NoError(t, os.Rename(bin, bin+".gone"))
	out, err = verify()
	require.Error(t, err, "verify passed without the installed binary: it proves nothing:\n%s", out)
	require.Contains(t, string(out), "/usr/bin/relay is not executable")
	require.NoError(t, os.Rename(bin+".gone", bin))
}

// installDeb installs deb with dpkg --root into a new throwaway root and
// returns it. systemd's own units (the targets the relay's units are
// ordered against) and /bin/kill (the static unit's ExecReload) are copied
// from this host, as a Debian system has them; nothing of the relay's is.
func installDeb(t *testing.T, deb string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc", "bin", "lib/systemd/system"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	require.NoError(t, os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644))
	out, err := exec.Command("cp", "-a", "/lib/systemd/system/.", filepath.Join(root, "lib/systemd/system")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.Command("cp", "/bin/kill", filepath.Join(root, "bin/kill")).CombinedOutput()
	require.NoError(t, err, "%s", out)
	matches, _ := filepath.Glob(filepath.Join(root, "lib/systemd/system/relay-*"))
	require.Empty(t, matches, "this host has relay units of its own")

	// systemd is what the package depends on for sysusers and tmpfiles;
	// this root has no package database entry for it, the host's tools run.
	cmd := exec.Command("dpkg", "--root="+root, "--force-script-chrootless", "--force-depends", "--log=/dev/null", "-i", deb)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "dpkg --root -i:\n%s", out)
	out, err = exec.Command("dpkg", "--root="+root, "-s", "relay").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "Status: install ok installed")
	return root
}

// TestDeb_Reproducible: the package builds byte-identically a second time,
// binary and all: `make build` into another file gives the same binary,
// and nfpm, given it and the same SOURCE_DATE_EPOCH, the same .deb.
func TestDeb_Reproducible(t *testing.T) {
	deb := debEnv(t)
	nfpm := os.Getenv("RELAY_NFPM")
	require.NotEmpty(t, nfpm, "RELAY_NFPM (make deb sets it)")
	require.NotEmpty(t, os.Getenv("SOURCE_DATE_EPOCH"), "make deb sets SOURCE_DATE_EPOCH")
	dir := t.TempDir()
	bin := filepath.Join(dir, "relay")
	out, err := exec.Command("make", "-C", "..", "build", "BIN="+bin).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.True(t, bytes.Equal(mustRead(t, filepath.Join("..", os.Getenv("RELAY_DEB_BINARY"))), mustRead(t, bin)), "a second make build gave another binary")

	second := filepath.Join(dir, "second.deb")
	cmd := exec.Command(nfpm, "package", "--config", "deploy/nfpm.yaml", "--packager", "deb", "--target", second)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "RELAY_DEB_BINARY="+bin)
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.True(t, bytes.Equal(mustRead(t, deb), mustRead(t, second)), "a second build of the package differs")

	// And the check can fail: another SOURCE_DATE_EPOCH gives other bytes.
	other := filepath.Join(dir, "other.deb")
	cmd = exec.Command(nfpm, "package", "--config", "deploy/nfpm.yaml", "--packager", "deb", "--target", other)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "RELAY_DEB_BINARY="+bin, "SOURCE_DATE_EPOCH=1")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.False(t, bytes.Equal(mustRead(t, deb), mustRead(t, other)), "the mtimes do not reach the package: the comparison proves nothing")
}

// fileOwner is a file's numeric uid and gid.
func fileOwner(t *testing.T, fi os.FileInfo) [2]int {
	t.Helper()
	st, ok := fi.Sys().(*syscall.Stat_t)
	require.True(t, ok)
	return [2]int{int(st.Uid), int(st.Gid)}
}

// TestDeb_ConfigCheckAfterInstall: the walkthrough's "choose the mode" on
// the installed package. In the throwaway root (chroot, so every path in
// the file is the installed one): the shipped /etc/relay/relay.toml, no
// mode chosen, is refused by relay serve --check (exit 2); with the
// autocert block uncommented as docs/deploy.md says, the check passes as
// the relay user (the cache is its own) and prints the effective settings,
// and is refused as root, to whom the cache does not belong.
func TestDeb_ConfigCheckAfterInstall(t *testing.T) {
	deb := debEnv(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI runs make deb as root")
		}
		t.Skip("needs root to install into a throwaway root")
	}
	root := installDeb(t, deb)
	var uid, gid string
	for _, line := range strings.Split(string(mustRead(t, filepath.Join(root, "etc/passwd"))), "\n") {
		if f := strings.Split(line, ":"); len(f) > 3 && f[0] == "relay" {
			uid, gid = f[2], f[3]
		}
	}
	require.NotEmpty(t, uid)
	check := func(userspec string) (int, string) {
		cmd := exec.Command("chroot", "--userspec="+userspec, root, "/usr/bin/relay", "serve", "--check", "--config", confPath)
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err == nil {
			return 0, string(out)
		}
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok, "%v: %s", err, out)
		return ee.ExitCode(), string(out)
	}
	relayUser := uid + ":" + gid

	code, out := check(relayUser)
	require.Equal(t, 2, code, "the shipped file chooses no mode: %s", out)

	conf := filepath.Join(root, confPath)
	var edited []string
	in := false
	for _, line := range strings.Split(string(mustRead(t, conf)), "\n") {
		if strings.HasPrefix(line, "# --- ") {
			in = strings.Contains(line, "(relay-autocert.service")
		} else if line == "" {
			in = false
		} else if in && regexp.MustCompile(`^#[a-z-]+ = `).MatchString(line) {
			line = strings.TrimPrefix(line, "#")
		}
		edited = append(edited, line)
	}
	require.NoError(t, os.WriteFile(conf, []byte(strings.Join(edited, "\n")), 0o644))
	code, out = check(relayUser)
	require.Equal(t, 0, code, "the autocert block as shipped, checked as relay: %s", out)
	require.Contains(t, out, "relay.example.com", "the effective settings are printed")
	require.Contains(t, out, "/var/lib/relay/certs")

	code, out = check("0:0")
	require.Equal(t, 2, code, "as root the relay's cache is another user's: %s", out)
}
