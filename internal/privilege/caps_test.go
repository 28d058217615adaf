package privilege

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func status(prm, eff string) string {
	return "Name:\trelay\nUid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\n" +
		"CapPrm:\t" + prm + "\nCapEff:\t" + eff + "\nCapBnd:\t000001ffffffffff\nCapAmb:\t" + prm + "\n"
}

func TestCheckStatus(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		wantErr      string // "" = accepted
	}{
		{"no capabilities", status("0000000000000000", "0000000000000000"), ""},
		{"net_bind_service only", status("0000000000000400", "0000000000000400"), ""},
		{"root's full set", status("000001ffffffffff", "000001ffffffffff"), "CapEff holds cap_chown,cap_dac_override,cap_dac_read_search,cap_fowner,cap_fsetid and 35 more"},
		{"sys_admin beside net_bind_service", status("0000000000200400", "0000000000200400"), "CapEff holds cap_sys_admin"},
		{"permitted but not yet effective", status("0000000000002400", "0000000000000400"), "CapPrm holds cap_net_raw"},
		{"an unnamed future bit", status("0000800000000000", "0000800000000000"), "cap_47"},
		{"no CapEff line", "Name:\trelay\nCapPrm:\t0000000000000000\n", "no CapEff line"},
		{"garbage value", status("0000000000000000", "zz"), "unreadable CapEff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkStatus(strings.NewReader(tc.status))
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrCapabilities)
			require.ErrorContains(t, err, tc.wantErr)
		})
	}
}

func TestCheckCapabilities_FailsClosed(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Linux only")
	}
	err := CheckCapabilities(filepath.Join(t.TempDir(), "missing"))
	require.True(t, errors.Is(err, ErrCapabilities), "an unreadable status must refuse, got %v", err)

	p := filepath.Join(t.TempDir(), "status")
	require.NoError(t, os.WriteFile(p, []byte(status("0000000000000400", "0000000000000400")), 0o600))
	require.NoError(t, CheckCapabilities(p))
}
