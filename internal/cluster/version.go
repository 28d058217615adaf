package cluster

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MinServerVersion is the oldest nats-server cluster mode runs with
// (docs/cluster.md, "NATS server version"). What the relay uses of
// JetStream (a KV bucket with file storage, compare-and-set writes, direct
// gets) works from 2.9; the floor is higher because cluster mode's
// isolation (TM-CLU-1, TM-CLU-4) is NATS enforcing each instance's
// JetStream API permissions, and releases before 2.11.15 carry a published
// JetStream authorization bypass: CVE-2025-30215 (fixed in 2.10.27 and
// 2.11.1; never in 2.9, which Debian 12 ships as 2.9.10) and CVE-2026-33222
// (fixed in 2.11.15 and 2.12.6). The 2.12 line had the bypass until 2.12.6,
// so a single floor would let 2.12.0-2.12.5 through: lineFloors holds the
// first fixed release of each line newer than the floor that shipped one
// vulnerable. The project's tests run 2.15.3 (go.mod); 2.9.25 and 2.11.15
// were run by hand.
const MinServerVersion = "2.11.15"

// lineFloors: the first release of a MAJOR.MINOR line above
// MinServerVersion's own that is free of the advisories above. A line not
// listed here and above the floor passes whole.
var lineFloors = []string{"2.12.6"}

// versionRule is the wording of the floor in the refusal line and in
// docs/cluster.md.
const versionRule = MinServerVersion + " or later, and 2.12.6 or later on 2.12"

// ErrNATSTooOld is returned by Start when the NATS server it reaches at
// start reports a version below MinServerVersion (or none it can read):
// the relay refuses to start (exit 2) with one line naming both versions.
// Checked at start only, against the server the first connection reaches.
var ErrNATSTooOld = errors.New("cluster: the NATS server is too old")

// serverVersionOK checks a server's reported version against
// MinServerVersion and lineFloors. A pre-release of a floor (2.11.15-RC.1)
// is older than it.
func serverVersionOK(v string) error {
	if got, ok := parseVersion(v); ok && versionAllowed(got) {
		return nil
	}
	if v == "" {
		v = "(none reported)"
	}
	return fmt.Errorf("%w: nats-server %s; cluster mode needs %s (docs/cluster.md, NATS server version)", ErrNATSTooOld, v, versionRule)
}

func versionAllowed(got version) bool {
	min, _ := parseVersion(MinServerVersion)
	if got.less(min) {
		return false
	}
	for _, f := range lineFloors {
		floor, _ := parseVersion(f)
		if got.n[0] == floor.n[0] && got.n[1] == floor.n[1] {
			return !got.less(floor)
		}
	}
	return true
}

type version struct {
	n   [3]int
	pre bool // a pre-release (-RC.1, -beta) of n
}

func (a version) less(b version) bool {
	for i := range a.n {
		if a.n[i] != b.n[i] {
			return a.n[i] < b.n[i]
		}
	}
	return a.pre && !b.pre
}

// parseVersion reads "MAJOR.MINOR.PATCH" with an optional "-pre-release"
// or "+build" suffix.
func parseVersion(s string) (version, bool) {
	var v version
	core, _, _ := strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(core, "-")
	v.pre = hasPre && pre != ""
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return v, false
	}
	for i, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return v, false
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return v, false
		}
		v.n[i] = n
	}
	return v, true
}
