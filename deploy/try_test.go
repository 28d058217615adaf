package deploy

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// indentedBlock returns the command lines of the first indented code block
// after marker in a document (its "# ..." comments cut off).
func indentedBlock(t *testing.T, doc, marker string) []string {
	t.Helper()
	b, err := os.ReadFile(doc)
	require.NoError(t, err)
	s := string(b)
	i := strings.Index(s, marker)
	require.GreaterOrEqual(t, i, 0, "%s: no %q", doc, marker)
	var lines []string
	for _, line := range strings.Split(s[i:], "\n")[1:] {
		if strings.HasPrefix(line, "    ") {
			cmd, _, _ := strings.Cut(strings.TrimSpace(line), "  #")
			lines = append(lines, strings.TrimSpace(cmd))
			continue
		}
		if len(lines) > 0 {
			break
		}
	}
	require.NotEmpty(t, lines, "%s: no indented block after %q", doc, marker)
	return lines
}

// lineWith returns the one line of block that starts with prefix.
func lineWith(t *testing.T, block []string, prefix string) string {
	t.Helper()
	var found []string
	for _, l := range block {
		if strings.HasPrefix(l, prefix) {
			found = append(found, l)
		}
	}
	require.Len(t, found, 1, "want one line starting %q in %q", prefix, block)
	return found[0]
}

// buildCmd builds ./cmd/NAME into a temp dir.
func buildCmd(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "../cmd/"+name) // make build's flags: shared packages come from its cache
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build %s:\n%s", name, out)
	return bin
}

// relayArgs turns a documented `bin/relay serve ...` line into the test
// relay's arguments: $(cat FILE) expanded from the file, each documented
// loopback address replaced by a free port.
func relayArgs(t *testing.T, line string, dirs map[string]string) []string {
	t.Helper()
	for doc, real := range dirs {
		line = strings.ReplaceAll(line, doc, real)
	}
	// The documented addresses first: the file's own (the fakes' ports)
	// stay as written.
	line = regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllStringFunc(line, func(string) string { return freeLoopbackAddr(t) })
	line = regexp.MustCompile(`\$\(cat ([^)]+)\)`).ReplaceAllStringFunc(line, func(m string) string {
		b, err := os.ReadFile(m[len("$(cat ") : len(m)-1])
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	})
	f := strings.Fields(line)
	require.Equal(t, []string{"bin/relay", "serve"}, f[:2], line)
	return f[2:]
}

// waitFile waits for a file a subprocess writes.
func waitFile(t *testing.T, path string, out *logBuf) {
	t.Helper()
	require.Eventually(t, func() bool { _, err := os.Stat(path); return err == nil }, 30*time.Second, 20*time.Millisecond,
		"%s never appeared; output:\n%s", path, out)
}

// TestTryLocally_Push follows docs/deploy.md "Trying push and autocert
// locally" for push: relay-fakefcm --dir DIR, the relay with the flags it
// wrote, a binary's push_wake: the fake FCM receives the wake (a
// well-formed request with a token its token endpoint issued against the
// key's signed assertion), prints it, and the relay counts it sent.
func TestTryLocally_Push(t *testing.T) {
	block := indentedBlock(t, "../docs/deploy.md", "**Push, against a fake FCM.**")
	docDir := strings.TrimPrefix(lineWith(t, block, "go run ./cmd/relay-fakefcm --dir "), "go run ./cmd/relay-fakefcm --dir ")
	dir := filepath.Join(t.TempDir(), "push")
	out, _ := startCmd(t, buildCmd(t, "relay-fakefcm"), "--dir", dir)
	waitFile(t, filepath.Join(dir, "relay-flags"), out)

	args := relayArgs(t, lineWith(t, block, "bin/relay serve "), map[string]string{docDir: dir})
	addrs := serveRelay(t, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addrs["public"]+"/v1/server", &websocket.DialOptions{HTTPHeader: http.Header{
		"X-Pyrycode-Server": {"try-push"}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"deploy-test"}}})
	require.NoError(t, err)
	defer c.CloseNow()
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(`{"push_wake":{"platform":"fcm","token":"my-phone"}}`)))
	require.Eventually(t, func() bool { return strings.Contains(out.String(), `fcm: wake for device token "my-phone"`) },
		20*time.Second, 20*time.Millisecond, "the fake FCM never got the wake:\n%s", out)
	scrapeUntil(t, addrs["metrics"], `relay_push_wakes_total{outcome="sent"} 1`)
}

// TestTryLocally_Autocert follows the same section for autocert:
// relay-pebble --dir DIR, the cache directory, the relay in autocert mode
// with the flags it wrote, then the documented curl (only the ports
// changed): the certificate verifies against Pebble's root and /readyz
// answers ok.
func TestTryLocally_Autocert(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is required in CI")
		}
		t.Skip("curl not installed")
	}
	block := indentedBlock(t, "../docs/deploy.md", "**Autocert, against Pebble.**")
	docDir := strings.TrimPrefix(lineWith(t, block, "go run ./cmd/relay-pebble --dir "), "go run ./cmd/relay-pebble --dir ")
	dir := filepath.Join(t.TempDir(), "acme")
	out, _ := startCmd(t, buildCmd(t, "relay-pebble"), "--dir", dir, "--listen", freeLoopbackAddr(t))
	waitFile(t, filepath.Join(dir, "relay-flags"), out)

	require.Equal(t, "install -d -m 0700 "+docDir+"/certs", lineWith(t, block, "install -d "))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "certs"), 0o700))
	serve := lineWith(t, block, "bin/relay serve ")
	https := regexp.MustCompile(`--https-listen (127\.0\.0\.1:\d+)`).FindStringSubmatch(serve)
	require.NotNil(t, https, serve)
	args := relayArgs(t, serve, map[string]string{docDir: dir})
	addrs := serveRelay(t, args...)
	port := addrs["public"][strings.LastIndex(addrs["public"], ":")+1:]

	curlLine := strings.ReplaceAll(lineWith(t, block, "curl "), docDir, dir)
	docPort := https[1][strings.LastIndex(https[1], ":")+1:]
	curlLine = strings.ReplaceAll(curlLine, ":"+docPort, ":"+port)
	f := strings.Fields(curlLine)
	res, err := exec.Command(curl, append([]string{"-sS", "--max-time", "30"}, f[1:]...)...).CombinedOutput()
	require.NoError(t, err, "%s: %s", curlLine, res)
	require.Equal(t, "ok", strings.TrimSpace(string(res)))
}

// TestUnits_ProxyPushDropIn: with deploy/relay-proxy-push.conf installed
// as the docs say, systemd reads the proxy unit's IP allow list as no
// longer loopback-only (without it: loopback only, which refuses FCM), the
// unit still verifies, and its exposure stays at most maxExposure.
func TestUnits_ProxyPushDropIn(t *testing.T) {
	sa := systemdAnalyze(t)
	install := indentedBlock(t, "../docs/deploy.md", "add the drop-in")
	m := regexp.MustCompile(`^install -D -m 0644 deploy/relay-proxy-push\.conf /etc/systemd/system/(\S+)\.service\.d/(\S+\.conf)$`).FindStringSubmatch(install[0])
	require.NotNil(t, m, "the documented install line: %q", install[0])
	for _, dropIn := range []bool{false, true} {
		root := t.TempDir()
		unitDir := filepath.Join(root, "etc/systemd/system")
		require.NoError(t, os.MkdirAll(filepath.Join(unitDir, m[1]+".service.d"), 0o755))
		b, err := os.ReadFile("relay-proxy.service")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(unitDir, m[1]+".service"), []byte(strings.ReplaceAll(string(b), "/usr/bin/relay", relayBin)), 0o644))
		if dropIn {
			d, err := os.ReadFile("relay-proxy-push.conf")
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(unitDir, m[1]+".service.d", m[2]), d, 0o644))
		}
		out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", "--root="+root,
			"--threshold="+strconv.Itoa(int(maxExposure*10)), m[1]+".service").CombinedOutput()
		require.NoError(t, err, "exposure above %.1f:\n%s", maxExposure, out)
		line := regexp.MustCompile(`(?m)^.*IPAddressDeny=.*$`).FindString(string(out))
		if dropIn {
			require.Contains(t, line, "non-localhost entries", "the drop-in must open addresses beyond loopback")
		} else {
			require.Contains(t, line, "only localhost entries", "the shipped unit is loopback-only")
		}
		t.Logf("drop-in %v: %s", dropIn, exposureRE.FindString(string(out)))
	}
}
