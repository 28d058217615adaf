package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/stretchr/testify/require"
)

func settings(kv ...string) []debug.BuildSetting {
	var s []debug.BuildSetting
	for i := 0; i < len(kv); i += 2 {
		s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
	}
	return s
}

func TestResolve(t *testing.T) {
	vcsBuild := &debug.BuildInfo{GoVersion: "go1.27.3", Main: debug.Module{Version: "v0.0.0-20261130080000-0123456789ab"},
		Settings: settings("vcs", "git", "vcs.revision", "0123456789abcdef", "vcs.modified", "false")}
	dirty := &debug.BuildInfo{GoVersion: "go1.27.3", Main: debug.Module{Version: "(devel)"},
		Settings: settings("vcs", "git", "vcs.revision", "0123456789abcdef", "vcs.modified", "true")}
	noVCS := &debug.BuildInfo{GoVersion: "go1.27.3", Main: debug.Module{Version: "(devel)"}, Settings: settings("-trimpath", "true")}

	for _, tc := range []struct {
		name       string
		ldV, ldRev string
		bi         *debug.BuildInfo
		ok         bool
		want       Info
	}{
		{"ldflags win", "v1.2.3", "feedface", vcsBuild, true, Info{Version: "v1.2.3", Revision: "feedface", GoVersion: "go1.27.3"}},
		{"plain go build in a checkout", "", "", vcsBuild, true, Info{Version: "v0.0.0-20261130080000-0123456789ab", Revision: "0123456789abcdef", GoVersion: "go1.27.3"}},
		{"dirty tree", "", "", dirty, true, Info{Version: "devel", Revision: "0123456789abcdef+dirty", GoVersion: "go1.27.3"}},
		{"-buildvcs=false, no ldflags", "", "", noVCS, true, Info{Version: "devel", Revision: Unknown, GoVersion: "go1.27.3",
			Why: "built with -buildvcs=false or outside a VCS checkout"}},
		{"-buildvcs=false, version stamped", "v1.2.3", "", noVCS, true, Info{Version: "v1.2.3", Revision: Unknown, GoVersion: "go1.27.3",
			Why: "built with -buildvcs=false or outside a VCS checkout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, resolve(tc.ldV, tc.ldRev, tc.bi, tc.ok))
		})
	}
	got := resolve("", "", nil, false)
	require.Equal(t, "devel", got.Version)
	require.Equal(t, Unknown, got.Revision)
	require.NotEmpty(t, got.GoVersion, "the running toolchain is always known")
	require.NotEmpty(t, got.Why)
}

func TestString_NeverBareDev(t *testing.T) {
	s := Info{Version: "devel", Revision: Unknown, GoVersion: "go1.27.3", Why: "built with -buildvcs=false"}.String()
	require.Regexp(t, `^relay devel \(revision unknown - built with -buildvcs=false, go1\.27\.3 \S+/\S+\)$`, s)
	s = Info{Version: "v1.2.3", Revision: "abc", GoVersion: "go1.27.3"}.String()
	require.Regexp(t, `^relay v1\.2\.3 \(revision abc, go1\.27\.3 \S+/\S+\)$`, s)
}
