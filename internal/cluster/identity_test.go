package cluster_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/cluster/natsauth"
)

// Credentials issued for another instance (b's .creds file copied to a)
// would connect, and then every publish as a would be refused by NATS with
// nothing but a permissions line in the log: the relay refuses to start
// instead, naming the user, the subject it lacks and the id. The same for
// credentials of another cluster name. Without the check the relay starts
// (TestCluster_TLSAndCreds_CrossInstanceFramesFlow shows matching
// credentials do).
func TestCluster_CredsOfAnotherInstance_RefusedAtStart(t *testing.T) {
	t.Parallel()
	sn := startSecureNATS(t, nil)
	refusedStartSaying(t, []string{"the NATS credentials do not match --instance-id", `user "relay-b"`, "relay.owner.a", `instance "a"`},
		"--cluster-nats", sn.ns.URL(), "--cluster-nats-creds", sn.creds(t, "b"), "--instance-id", "a")

	other, err := sn.issuer.InstanceCreds("staging", "a")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "a.creds")
	require.NoError(t, os.WriteFile(path, other, 0o600))
	refusedStartSaying(t, []string{"the NATS credentials do not match --instance-id", `user "staging-a"`, "relay.owner.a"},
		"--cluster-nats", sn.ns.URL(), "--cluster-nats-creds", path, "--instance-id", "a")
}

// A second live instance with the same --instance-id would read the first
// one's messages and write its claims: it refuses to start (exit 2), and
// the first is untouched. Another id starts.
func TestCluster_DuplicateInstanceID_RefusedAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	refusedStartSaying(t, []string{"another live instance uses this --instance-id", `instance "a"`},
		"--cluster-nats", e.nats.URL(), "--instance-id", "a")
	require.False(t, e.relays[0].proc.Exited())
	e.start("b")
}

// A duplicate the start cannot see: b-twin starts while NATS is down (the
// preflight cannot ask), then NATS returns and both instances named "a"
// are live. Each logs cluster_duplicate_instance once for the episode and
// counts it in relay_cluster_duplicate_instances_total; a lone instance
// counts nothing.
func TestCluster_DuplicateInstanceID_MetAfterStart_LoggedAndCounted(t *testing.T) {
	t.Parallel() // mostly waits on leases
	e := newEnv(t, 2)
	a1 := e.relays[0]
	e.nats.Stop()
	a2 := e.start("a")
	require.NoError(t, e.nats.Restart())
	for _, in := range []*instance{a1, a2} {
		require.True(t, pollUntil(20*lease, func() bool {
			v, err := in.proc.Metric(context.Background(), "relay_cluster_duplicate_instances_total")
			return err == nil && v == 1
		}), "an instance named a never counted its duplicate")
	}
	// Another few checks: still one episode, logged once.
	time.Sleep(3 * 2 * lease)
	for _, in := range []*instance{a1, a2} {
		n := strings.Count(in.proc.LogText(), `"event":"cluster_duplicate_instance"`)
		require.Equal(t, 1, n, "one log line per episode")
		v, err := in.proc.Metric(context.Background(), "relay_cluster_duplicate_instances_total")
		require.NoError(t, err)
		require.Equal(t, 1.0, v)
	}
	v, err := e.relays[1].proc.Metric(context.Background(), "relay_cluster_duplicate_instances_total")
	require.NoError(t, err)
	require.Equal(t, 0.0, v, "b has no duplicate")
	a2.proc.Kill()
}

// CheckCreds reads the user JWT without connecting: matching credentials
// and a user of the whole account pass, another instance's or another
// cluster's are ErrCredsMismatch, a file with no JWT is invalid.
func TestCheckCreds(t *testing.T) {
	is, err := natsauth.New("test")
	require.NoError(t, err)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o600))
		return p
	}
	own, err := is.InstanceCreds("relay", "a")
	require.NoError(t, err)
	b, err := is.InstanceCreds("relay", "b")
	require.NoError(t, err)
	open, err := is.UserCreds("anyone", nil)
	require.NoError(t, err)
	o := cluster.Options{URLs: []string{"nats://127.0.0.1:1"}, InstanceID: "a"}

	o.CredsFile = write("a.creds", own)
	require.NoError(t, o.CheckCreds())
	o.CredsFile = write("open.creds", open)
	require.NoError(t, o.CheckCreds(), "a user with the whole account may be any instance")
	o.CredsFile = write("b.creds", b)
	err = o.CheckCreds()
	require.ErrorIs(t, err, cluster.ErrCredsMismatch)
	require.Contains(t, err.Error(), `user "relay-b" may not publish relay.owner.a`)
	require.NotContains(t, err.Error(), "\n")
	o.Name = "staging"
	o.CredsFile = write("a.creds", own)
	require.ErrorIs(t, o.CheckCreds(), cluster.ErrCredsMismatch, "another cluster name")
	o.Name = ""
	o.CredsFile = write("junk.creds", []byte("not a creds file"))
	err = o.CheckCreds()
	require.ErrorIs(t, err, cluster.ErrInvalidOptions)
	require.True(t, strings.Contains(err.Error(), "no NATS user JWT"))
}
