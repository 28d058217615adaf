package config

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/fileowner"
)

// clusterFlags registers the cluster-mode flags on fs, writing into o. They
// live apart from Parse's list so that cluster mode's flags read as one
// block; cluster mode is off unless --cluster-nats is set.
func clusterFlags(fs *flag.FlagSet, o *cluster.Options) {
	o.Name = cluster.DefaultName
	o.Lease = cluster.DefaultLease
	o.Replicas = 1
	fs.Var((*urlList)(&o.URLs), "cluster-nats", "cluster mode: comma-separated NATS URLs (nats:// or tls://); off when empty (docs/cluster.md)")
	fs.StringVar(&o.CredsFile, "cluster-nats-creds", "", "NATS credentials (.creds) file for this instance (its own user, publish limited to its own id; the file must be 0600/0400 and owned by the relay's user)")
	fs.StringVar(&o.CAFile, "cluster-nats-ca", "", "PEM CA bundle to verify the NATS servers' TLS certificates")
	fs.StringVar(&o.Name, "cluster-name", o.Name, "subject and claims-bucket prefix, so two clusters can share one NATS")
	fs.StringVar(&o.InstanceID, "instance-id", "", "this instance's id in the cluster, [A-Za-z0-9_-]{1,64} (default: random, logged at start)")
	fs.DurationVar(&o.Lease, "cluster-lease", o.Lease, "how long an instance's claims outlive its last heartbeat (it writes one every lease/3; a crashed instance's server-ids are claimable elsewhere within about this); the same on every instance")
	fs.IntVar(&o.Replicas, "cluster-replicas", o.Replicas, "replicas of the claims bucket (3 on a 3-node NATS cluster)")
	o.MaxPendingBytes = cluster.DefaultMaxPendingBytes
	fs.IntVar(&o.MaxPendingBytes, "cluster-max-pending-bytes", o.MaxPendingBytes, "bytes NATS may buffer for this instance's incoming cross-instance frames; past it (or for one larger frame) messages are dropped and every cross-instance phone here is closed 1011; keep it well above --max-message-bytes")
}

// clusterOnly are the flags that mean nothing without --cluster-nats.
var clusterOnly = []string{"cluster-nats-creds", "cluster-nats-ca", "cluster-name", "instance-id", "cluster-lease", "cluster-replicas", "cluster-max-pending-bytes"}

// urlList is a comma-separated list flag.
type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }

func (u *urlList) Set(s string) error {
	*u = nil
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*u = append(*u, part)
		}
	}
	return nil
}

// validateCluster renders cluster.Options' refusals as configuration errors.
func (c *Config) validateCluster(set map[string]bool) error {
	o := c.Cluster
	if !o.Enabled() {
		for _, name := range clusterOnly {
			if set[name] {
				return &Error{Problem: c.subject(name) + " needs --cluster-nats"}
			}
		}
		return nil
	}
	if err := o.WithDefaults().Validate(); err != nil {
		return &Error{Problem: oneLine(strings.TrimPrefix(err.Error(), cluster.ErrInvalidOptions.Error()+": "))}
	}
	for _, f := range []struct{ name, path string }{{"cluster-nats-creds", o.CredsFile}, {"cluster-nats-ca", o.CAFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return c.NameFile(fmt.Errorf("%s: cannot read the file: %w", f.path, pathErr(err)), f.name)
		}
	}
	if o.CredsFile != "" {
		if problem := credsFileProblem(o.CredsFile); problem != "" {
			return c.NameFile(errors.New(problem), "cluster-nats-creds")
		}
	}
	if o.CAFile != "" {
		// nats.go would refuse it only when it connects; --check connects to nothing.
		if pem, err := os.ReadFile(o.CAFile); err != nil || !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return c.NameFile(fmt.Errorf("%s holds no PEM certificate", o.CAFile), "cluster-nats-ca")
		}
	}
	return nil
}

// credsFileProblem applies the FCM credentials' rule (TM-OUT-5) to the
// NATS credentials, which are this instance's identity on NATS (the nkey
// seed signs its connection; whoever reads it can speak as the instance,
// TM-CLU-4): a regular file, no group or world bit, owned by the relay's
// uid. A symlink is a Kubernetes secret mount (creds -> ..data/creds): it
// is followed by fileowner.Resolve, every directory on the way checked, and
// the file it reaches must pass fileowner.CheckLinked (root's or the
// relay's, no group or world write, not world-readable). nats.go reads the
// file again at every (re)connect, so a rotated file is picked up; this
// check runs at start.
func credsFileProblem(path string) string {
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		real, err := fileowner.Resolve(path)
		if err == nil {
			fi, err = os.Lstat(real)
		}
		if err == nil {
			err = fileowner.CheckLinked(real, fi)
		}
		if err != nil {
			return path + ": " + strings.TrimPrefix(err.Error(), fileowner.ErrUnsafePath.Error()+": ")
		}
		return ""
	}
	switch {
	case err != nil:
		return "cannot read the file"
	case !fi.Mode().IsRegular():
		return path + " is not a regular file"
	case fi.Mode().Perm()&fileowner.GroupWorld != 0:
		return fmt.Sprintf("%s has mode %#o; want 0600 or 0400 (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	if owner, euid, foreign := fileowner.Foreign(fi); foreign {
		return fmt.Sprintf("%s is owned by uid %d, not the relay's uid %d", path, owner, euid)
	}
	return ""
}
