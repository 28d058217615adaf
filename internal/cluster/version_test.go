package cluster_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster"
)

// fakeNATS answers as a nats-server of version would, as far as the
// relay's version check reads: the INFO line, then PONG to every PING
// (publishes and subscriptions are swallowed, so requests time out as if
// no one answered). An old nats-server is a 90-second build from the
// module proxy on every CI run, for one field of one line; the real 2.9.25
// and 2.11.15 were run by hand against this check (docs/cluster.md, NATS
// server version).
func fakeNATS(t *testing.T, version string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "INFO {\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":%q,\"proto\":1,\"go\":\"go1.27\",\"host\":\"127.0.0.1\",\"port\":%d,\"headers\":true,\"max_payload\":1048576,\"jetstream\":true}\r\n", version, port)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "PING") {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			}()
		}
	}()
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// A NATS server older than cluster.MinServerVersion (Debian 12's 2.9.10), or
// a 2.12 release before its fix (2.12.5),
// refuses the start, exit 2, with one line naming both versions (the
// refusal line is checked against docs/cluster.md by refusedStartSaying).
func TestCluster_NATSServerTooOld_RefusedAtStart(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"2.9.10", "2.10.27", "2.11.15-RC.1", "2.12.5"} {
		refusedStartSaying(t, []string{"the NATS server is too old: nats-server " + v + "; cluster mode needs " + cluster.MinServerVersion + " or later, and 2.12.6 or later on 2.12"},
			"--cluster-nats", fakeNATS(t, v), "--instance-id", "a")
	}
}

// At the floor the check passes: the relay starts (it then waits for a
// JetStream that this fake does not have, as it would for an unreachable one).
func TestCluster_NATSServerAtMinimum_Starts(t *testing.T) {
	t.Parallel()
	_, err := build()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := attacks.StartProcess(ctx, relayBin, "serve", "--insecure-listen", "127.0.0.1:0", "--cluster-lease", lease.String(),
		"--cluster-nats", fakeNATS(t, cluster.MinServerVersion), "--instance-id", "a")
	require.NoError(t, err, "a %s server was refused", cluster.MinServerVersion)
	p.Kill()
	require.NotContains(t, p.LogText(), "too old")
}

// documentedRefusals are the refusal lines docs/cluster.md quotes (code
// spans starting "relay: refusing to start: "), as patterns: <reason> is one
// of the refusal reasons, <n> a number, any other <placeholder> some text.
func documentedRefusals(t *testing.T) []*regexp.Regexp {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cluster.md"))
	require.NoError(t, err)
	var out []*regexp.Regexp
	for _, m := range regexp.MustCompile("`(relay: refusing to start: [^`]+)`").FindAllStringSubmatch(string(doc), -1) {
		pat := regexp.QuoteMeta(m[1])
		pat = strings.ReplaceAll(pat, "<reason>", "(tls_unverified|tls_unavailable|authorization)")
		pat = strings.ReplaceAll(pat, "<n>", "[0-9]+")
		pat = regexp.MustCompile(`<[a-z_ -]+>`).ReplaceAllString(pat, ".+")
		out = append(out, regexp.MustCompile("^"+pat+"$"))
	}
	require.NotEmpty(t, out, "docs/cluster.md quotes no refusal line")
	return out
}

// requireDocumentedRefusal: the relay's refusal line is one docs/cluster.md
// quotes, word for word but for the placeholders.
func requireDocumentedRefusal(t *testing.T, line string) {
	t.Helper()
	for _, re := range documentedRefusals(t) {
		if re.MatchString(line) {
			return
		}
	}
	t.Fatalf("the refusal line is not one docs/cluster.md quotes (section \"Refusals at start\"):\n%s", line)
}

// Each start refusal of cluster mode has its line in docs/cluster.md: the
// sentinel's words appear in one quoted line.
func TestClusterDocs_QuoteEveryStartRefusal(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cluster.md"))
	require.NoError(t, err)
	for _, e := range []error{cluster.ErrNATSRefused, cluster.ErrNATSTooOld, cluster.ErrNATSPayloadTooSmall, cluster.ErrCredsMismatch, cluster.ErrDuplicateInstance} {
		want := "`relay: refusing to start: " + strings.TrimPrefix(e.Error(), "cluster: ")
		require.Contains(t, string(doc), want, "docs/cluster.md does not quote the refusal for %v", e)
	}
}
