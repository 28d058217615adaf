// Package fileowner is the one owner and permission check for files that
// hold secrets or keys: the FCM credentials (internal/push), the
// certificate cache (internal/tlsconf) and the NATS credentials
// (internal/config, --cluster-nats-creds). Another uid that owns such a
// file can read or replace it whatever its mode, and a group or world bit
// lets other users read it; the callers refuse both at start (exit 2) and
// chmod nothing. A secret given as a symlink (a Kubernetes secret mount) is
// followed by Resolve, which checks every directory on the way, and the file
// it reaches must pass CheckLinked (chain.go).
package fileowner

import "io/fs"

// GroupWorld are the permission bits a secret file or directory must not
// have: any access for the group or for others.
const GroupWorld fs.FileMode = 0o077
