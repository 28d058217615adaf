// Package buildinfo says which build is running: the release version, the
// VCS revision it was built from and the Go toolchain that built it. An
// operator needs all three to match a running relay to a commit and to the
// toolchain's security fixes, so none of them is ever left blank: what is
// not known is reported as unknown, with the reason.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Stamped at build time by the Makefile:
//
//	-ldflags "-X github.com/pyrycode/relay/internal/buildinfo.version=v1.2.3
//	          -X github.com/pyrycode/relay/internal/buildinfo.revision=<commit>"
//
// The revision is stamped too because CI builds with -buildvcs=false, which
// leaves runtime/debug.ReadBuildInfo without one. Unset, both fall back to
// what the go command recorded in the binary.
var version, revision string

// Unknown is the value of a field the build did not record.
const Unknown = "unknown"

// Info describes the running build.
type Info struct {
	// Version is the -ldflags version, else the main module's version as
	// the go command recorded it (a tag or pseudo-version when built from a
	// VCS checkout or with go install module@version), else "devel".
	Version string
	// Revision is the VCS commit (with "+dirty" when the tree had local
	// changes), or Unknown when the build recorded none.
	Revision string
	// GoVersion is the toolchain that built the binary, e.g. "go1.27.3".
	GoVersion string
	// Why says why Revision is Unknown (empty otherwise).
	Why string
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build information.
func Get() Info {
	once.Do(func() {
		bi, ok := debug.ReadBuildInfo()
		info = resolve(version, revision, bi, ok)
	})
	return info
}

// resolve combines the -ldflags values with the binary's recorded build
// information (bi, present when ok).
func resolve(ldVersion, ldRevision string, bi *debug.BuildInfo, ok bool) Info {
	in := Info{Version: ldVersion, Revision: ldRevision, GoVersion: runtime.Version()}
	var vcsRev, modified, vcs string
	if ok && bi != nil {
		if bi.GoVersion != "" {
			in.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs":
				vcs = s.Value
			case "vcs.revision":
				vcsRev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
	}
	if in.Version == "" {
		in.Version = "devel"
	}
	if in.Revision == "" && vcsRev != "" {
		in.Revision = vcsRev
		if modified == "true" {
			in.Revision += "+dirty"
		}
	}
	if in.Revision == "" {
		in.Revision = Unknown
		switch {
		case !ok:
			in.Why = "no build information in the binary"
		case vcs == "":
			in.Why = "built with -buildvcs=false or outside a VCS checkout"
		default:
			in.Why = "the build recorded no revision"
		}
	}
	return in
}

// String is the one line `relay version` prints, e.g.
// "relay v1.2.3 (revision 0123abcd…, go1.27.3 linux/amd64)".
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "relay %s (revision %s", i.Version, i.Revision)
	if i.Why != "" {
		fmt.Fprintf(&b, " - %s", i.Why)
	}
	fmt.Fprintf(&b, ", %s %s/%s)", i.GoVersion, runtime.GOOS, runtime.GOARCH)
	return b.String()
}
