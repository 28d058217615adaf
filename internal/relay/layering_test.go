package relay

import (
	"os/exec"
	"strings"
	"testing"
)

// The routing core keeps to routing: the TLS policy, autocert and the
// certificate-cache check live in internal/tlsconf, so neither the relay
// package nor its tests pull in ACME, Pebble or the TLS policy (a change to
// certificate handling cannot touch routing, and the reverse).
func TestRoutingCore_ImportsNoACMEOrTLSPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	out, err := exec.Command("go", "list", "-deps", "-test", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for dep := range strings.Lines(string(out)) {
		dep = strings.TrimSpace(dep)
		for _, banned := range []string{
			"golang.org/x/crypto/acme",
			"github.com/letsencrypt/pebble",
			"github.com/pyrycode/relay/internal/acmetest",
			"github.com/pyrycode/relay/internal/tlsconf",
		} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("internal/relay (with its tests) depends on %s", dep)
			}
		}
	}
}
