package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/attacks"
	"github.com/pyrycode/relay/internal/cluster/natsauth"
	"github.com/pyrycode/relay/internal/cluster/natstest"
)

// TLS and credentials to NATS (TM-CLU-3) and per-instance permissions
// (TM-CLU-4), against a real nats-server in operator mode: every account
// and user JWT is issued here by internal/cluster/natsauth (what
// cmd/relay-nats-auth writes for operators), and the server reads the
// generated configuration with nats-server's own parser.

// testCA is a CA and a certificate it issued for 127.0.0.1.
type testCA struct {
	caFile string // PEM of the CA, for --cluster-nats-ca
	server *tls.Config
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)
	ca := &testCA{caFile: filepath.Join(dir, "ca.pem")}
	require.NoError(t, os.WriteFile(ca.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600))
	ca.server = &tls.Config{MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der, caDER}, PrivateKey: key}}}
	return ca
}

// secureNATS is an operator-mode NATS, TLS required when ca is set.
type secureNATS struct {
	ns     *natstest.Server
	issuer *natsauth.Issuer
	dir    string // creds files
}

func startSecureNATS(t *testing.T, ca *testCA) *secureNATS {
	t.Helper()
	is, err := natsauth.New("relay-test")
	require.NoError(t, err)
	c := natstest.Config{Dir: t.TempDir(), Auth: is.ServerConfig()}
	if ca != nil {
		c.TLS = ca.server
	}
	ns, err := natstest.StartConfig(c)
	require.NoError(t, err)
	t.Cleanup(ns.Stop)
	return &secureNATS{ns: ns, issuer: is, dir: t.TempDir()}
}

// creds writes instance id's creds file (cluster "relay") and returns it.
func (s *secureNATS) creds(t *testing.T, id string) string {
	t.Helper()
	b, err := s.issuer.InstanceCreds("relay", id)
	require.NoError(t, err)
	path := filepath.Join(s.dir, id+".creds")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}

// envOn is newEnv against a NATS server the test configured.
func envOn(t *testing.T, ns *natstest.Server) *env {
	t.Helper()
	_, err := build()
	require.NoError(t, err)
	e := &env{t: t, nats: ns}
	t.Cleanup(func() {
		for _, r := range e.relays {
			if r.proc != nil && !r.proc.Exited() {
				r.proc.Kill()
			}
		}
		if t.Failed() {
			for _, r := range e.relays {
				if r.proc != nil {
					t.Logf("relay %s log:\n%s", r.id, tailLines(r.proc.LogText(), 60))
				}
			}
		}
	})
	return e
}

// refusedStart runs a relay that must refuse to start: exit 2, one line
// naming the refusal reason.
func refusedStart(t *testing.T, reason string, args ...string) {
	t.Helper()
	refusedStartSaying(t, []string{"NATS refused the connection (" + reason + ")"}, args...)
}

// refusedStartSaying runs a relay with args that must refuse to start:
// exit 2, its output holding every string of want.
func refusedStartSaying(t *testing.T, want []string, args ...string) {
	t.Helper()
	_, err := build()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := attacks.StartProcess(ctx, relayBin, append([]string{"serve", "--insecure-listen", "127.0.0.1:0", "--cluster-lease", lease.String()}, args...)...)
	if err == nil {
		p.Kill()
		t.Fatalf("relay started (want a refusal saying %q):\n%s", want, tailLines(p.LogText(), 20))
	}
	require.Equal(t, 2, p.ExitCode(), "exit code (2 = refused to start):\n%s", p.LogText())
	for _, w := range want {
		require.Contains(t, p.LogText(), w, "the refusal says why")
	}
	lines := p.Log()
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	require.NotEmpty(t, lines)
	requireDocumentedRefusal(t, lines[len(lines)-1])
}

func TestCluster_TLSAndCreds_CrossInstanceFramesFlow(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	e := envOn(t, sn.ns)
	for _, id := range []string{"a", "b", "c"} {
		e.start(id, "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", ca.caFile, "--cluster-nats-creds", sn.creds(t, id))
	}
	a, b, c := e.relays[0], e.relays[1], e.relays[2]
	sid := newID("tls")
	bin := binaryAt(t, a, sid)
	for _, home := range []*instance{b, c} {
		p := phoneAt(t, home, sid)
		roundTrip(t, bin, p, hello(t, bin, p))
	}
	// And the other way round: a binary on c, its phone on a.
	sid2 := newID("tls")
	bin2 := binaryAt(t, c, sid2)
	p2 := phoneAt(t, a, sid2)
	roundTrip(t, bin2, p2, hello(t, bin2, p2))
	for _, r := range e.relays {
		for _, l := range r.proc.Log() {
			// Permissions narrower than what the relay does would show
			// here (a permissions violation is an asynchronous error).
			require.NotContains(t, l, `"event":"cluster_nats_error"`, "relay %s", r.id)
		}
	}
}

// A refusal after start (NATS now presents a certificate from another CA)
// is logged with its reason and retried: the relay keeps serving, and
// reconnects once NATS is fixed.
func TestCluster_NATSRefusalAfterStart_LoggedAndRetried(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	e := envOn(t, sn.ns)
	r := e.start("a", "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", ca.caFile, "--cluster-nats-creds", sn.creds(t, "a"))
	count := func(event, reason string) int {
		n := 0
		for _, l := range r.proc.Log() {
			if strings.Contains(l, `"event":"`+event+`"`) && strings.Contains(l, reason) {
				n++
			}
		}
		return n
	}
	sn.ns.Stop()
	sn.ns.SetTLS(newTestCA(t, "other").server)
	require.NoError(t, sn.ns.Restart())
	require.True(t, pollUntil(10*time.Second, func() bool { return count("cluster_nats_refused", `"reason":"tls_unverified"`) > 0 }),
		"the refusal is logged with its reason")
	require.False(t, r.proc.Exited(), "a refusal after start is retried, not fatal")
	reconnected := count("cluster_reconnected", "")
	sn.ns.Stop()
	sn.ns.SetTLS(ca.server)
	require.NoError(t, sn.ns.Restart())
	require.True(t, pollUntil(10*time.Second, func() bool { return count("cluster_reconnected", "") > reconnected }),
		"the relay reconnects once NATS presents a certificate it trusts")

	// Now NATS trusts another operator: the credentials are refused, and
	// the relay keeps retrying.
	other, err := natsauth.New("other-operator")
	require.NoError(t, err)
	sn.ns.Stop()
	sn.ns.SetAuth(other.ServerConfig())
	require.NoError(t, sn.ns.Restart())
	require.True(t, pollUntil(10*time.Second, func() bool { return count("cluster_nats_refused", `"reason":"authorization"`) > 0 }),
		"the credentials' refusal is logged with its reason")
	reconnected = count("cluster_reconnected", "")
	sn.ns.Stop()
	sn.ns.SetAuth(sn.issuer.ServerConfig())
	require.NoError(t, sn.ns.Restart())
	require.True(t, pollUntil(10*time.Second, func() bool { return count("cluster_reconnected", "") > reconnected }),
		"the relay reconnects once NATS trusts its credentials again")
	require.False(t, r.proc.Exited())
	require.LessOrEqual(t, count("cluster_nats_refused", ""), 2, "one line per reason, not one per retry")
}

func TestCluster_NATSWrongCA_RefusedAtStart(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	other := newTestCA(t, "other")
	refusedStart(t, "tls_unverified", "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", other.caFile,
		"--cluster-nats-creds", sn.creds(t, "a"), "--instance-id", "a")
}

func TestCluster_NATSNoCreds_RefusedAtStart(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	refusedStart(t, "authorization", "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", ca.caFile, "--instance-id", "a")
}

func TestCluster_NATSForeignCreds_RefusedAtStart(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	// Well-formed credentials for instance a, issued by another operator.
	foreign, err := natsauth.New("someone-else")
	require.NoError(t, err)
	b, err := foreign.InstanceCreds("relay", "a")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "a.creds")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	refusedStart(t, "authorization", "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", ca.caFile,
		"--cluster-nats-creds", path, "--instance-id", "a")
}

// A nats:// URL to a server that requires TLS never talks plaintext: the
// client follows the server into TLS and, with no CA naming the server's
// issuer, refuses its certificate.
func TestCluster_NATSPlaintextURLToTLSServer_Refused(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, ca)
	refusedStart(t, "tls_unverified", "--cluster-nats", sn.ns.URL(), "--cluster-nats-creds", sn.creds(t, "a"), "--instance-id", "a")
}

// A tls:// URL to a server that offers no TLS (a stripped or misconfigured
// NATS) is refused, never downgraded.
func TestCluster_NATSTLSWantedPlaintextServer_Refused(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "nats")
	sn := startSecureNATS(t, nil)
	refusedStart(t, "tls_unavailable", "--cluster-nats", sn.ns.TLSURL(), "--cluster-nats-ca", ca.caFile,
		"--cluster-nats-creds", sn.creds(t, "a"), "--instance-id", "a")
}

// TestCluster_InstancePermissions: instance a's user publishes only
// subjects whose sender token is a, in its own cluster, and reads only its
// own inbox and replies. An observer with an unrestricted user of the same
// account sees what got through. Ordering makes it exact without sleeps: a
// connection's messages reach a subscriber in order, so once the last
// (allowed) message arrives, every earlier one that NATS let through has.
func TestCluster_InstancePermissions(t *testing.T) {
	t.Parallel()
	sn := startSecureNATS(t, nil)
	connect := func(creds []byte, errs *violations) *nats.Conn {
		path := filepath.Join(t.TempDir(), "u.creds")
		require.NoError(t, os.WriteFile(path, creds, 0o600))
		opts := []nats.Option{nats.UserCredentials(path)}
		if errs != nil {
			opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) }))
		}
		nc, err := nats.Connect(sn.ns.URL(), opts...)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		return nc
	}
	adminCreds, err := sn.issuer.UserCreds("admin", nil)
	require.NoError(t, err)
	admin := connect(adminCreds, nil)
	aCreds, err := sn.issuer.InstanceCreds("relay", "a")
	require.NoError(t, err)
	var errs violations
	a := connect(aCreds, &errs)

	seen := make(chan string, 64)
	_, err = admin.Subscribe(">", func(m *nats.Msg) { seen <- m.Subject })
	require.NoError(t, err)
	require.NoError(t, admin.Flush())

	allowed := []string{"relay.i.b.m.a", "relay.i.c.join.a", "relay.i.b.probe.a", "relay.i.b.ping.a", "relay.owner.a"}
	denied := []string{
		"relay.i.c.m.b",      // a link message as b
		"relay.i.a.m.b",      // to itself, as b
		"relay.i.c.join.b",   // a join as b
		"relay.owner.b",      // an ownership broadcast as b
		"other.i.b.m.a",      // another cluster's subjects
		"relay.i.b.m.a.x",    // a longer subject ending elsewhere
		"_INBOX.relay.b.x.y", // b's replies
		"$KV.other-claims.s00",
		"$JS.API.STREAM.DELETE.KV_relay-claims",
		"$JS.API.STREAM.PURGE.KV_relay-claims",
	}
	for _, s := range denied {
		require.NoError(t, a.Publish(s, []byte("x")))
	}
	for _, s := range allowed {
		require.NoError(t, a.Publish(s, []byte("x")))
	}
	require.NoError(t, a.Flush())
	var got []string
	for len(got) < len(allowed) {
		select {
		case s := <-seen:
			got = append(got, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("allowed publishes seen %v, want %v", got, allowed)
		}
	}
	require.Equal(t, allowed, got, "exactly the allowed publishes got through, in order")
	require.True(t, pollUntil(5*time.Second, func() bool { return errs.count("Publish") >= len(denied) }),
		"every denied publish is reported: %v", errs.list())

	// Subscriptions: a's own inbox yes; b's inbox, b's replies, everything: no.
	got = nil
	var mu sync.Mutex
	record := func(m *nats.Msg) { mu.Lock(); got = append(got, m.Subject); mu.Unlock() }
	for _, s := range []string{"relay.i.b.>", "_INBOX.relay.b.>", ">", "relay.i.*.m.*"} {
		_, err := a.Subscribe(s, record)
		require.NoError(t, err)
	}
	_, err = a.Subscribe("relay.i.a.>", record)
	require.NoError(t, err)
	require.NoError(t, a.Flush())
	require.True(t, pollUntil(5*time.Second, func() bool { return errs.count("Subscription") >= 4 }),
		"every denied subscription is reported: %v", errs.list())
	for _, s := range []string{"relay.i.b.m.c", "_INBOX.relay.b.abc.1", "relay.i.a.m.b"} {
		require.NoError(t, admin.Publish(s, []byte("x")))
	}
	require.NoError(t, admin.Flush())
	require.True(t, pollUntil(5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) > 0 }))
	mu.Lock()
	require.Equal(t, []string{"relay.i.a.m.b"}, got, "a reads its own inbox and nothing else")
	mu.Unlock()
}

type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) add(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

func (v *violations) count(kind string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, e := range v.errs {
		if strings.Contains(strings.ToLower(e), "permissions violation for "+strings.ToLower(kind)) {
			n++
		}
	}
	return n
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.errs...)
}
