// Package privilege holds the start-up check that the relay runs with no
// Linux capability beyond CAP_NET_BIND_SERVICE. The relay needs nothing else
// (it binds 443 and 80, and touches only its certificate cache), so any other
// capability is a mistake in the unit or container that would turn a bug in
// the relay, or in a dependency (TM-SUP-1), into a host compromise.
package privilege

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// ProcStatus is where Linux reports the calling process's capability sets.
const ProcStatus = "/proc/self/status"

// capNetBindService is CAP_NET_BIND_SERVICE's bit (linux/capability.h).
const capNetBindService = 10

// Allowed is the only capability set the relay accepts.
const Allowed uint64 = 1 << capNetBindService

// ErrCapabilities is returned when the process holds a capability beyond
// CAP_NET_BIND_SERVICE, or when its capability sets cannot be read (the
// check fails closed). The relay refuses to start (exit 2).
var ErrCapabilities = errors.New("relay: capabilities beyond CAP_NET_BIND_SERVICE")

// CheckCapabilities reads path (ProcStatus in production) and returns
// ErrCapabilities, naming the extra capabilities, if the effective or the
// permitted set holds anything but CAP_NET_BIND_SERVICE. The permitted set
// is checked too because a process can raise any permitted capability to
// effective at will, so code running inside the relay could. Off Linux,
// where there is no such file, it returns nil.
func CheckCapabilities(path string) error {
	if runtime.GOOS != "linux" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: cannot read %s: %v", ErrCapabilities, path, err)
	}
	defer f.Close()
	return checkStatus(f)
}

// checkStatus parses the CapEff and CapPrm lines of a /proc/PID/status.
func checkStatus(r io.Reader) error {
	sets := map[string]uint64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "CapEff" && k != "CapPrm") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return fmt.Errorf("%w: unreadable %s line %q", ErrCapabilities, k, sc.Text())
		}
		sets[k] = n
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", ErrCapabilities, err)
	}
	for _, k := range []string{"CapEff", "CapPrm"} {
		n, ok := sets[k]
		if !ok {
			return fmt.Errorf("%w: no %s line in the process status", ErrCapabilities, k)
		}
		if extra := n &^ Allowed; extra != 0 {
			return fmt.Errorf("%w: %s holds %s (drop them: CapabilityBoundingSet=CAP_NET_BIND_SERVICE, see docs/deploy.md)",
				ErrCapabilities, k, names(extra))
		}
	}
	return nil
}

// capNames are the capability names by bit (linux/capability.h, up to 40).
var capNames = [...]string{
	"cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid",
	"cap_kill", "cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable",
	"cap_net_bind_service", "cap_net_broadcast", "cap_net_admin", "cap_net_raw", "cap_ipc_lock",
	"cap_ipc_owner", "cap_sys_module", "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace",
	"cap_sys_pacct", "cap_sys_admin", "cap_sys_boot", "cap_sys_nice", "cap_sys_resource",
	"cap_sys_time", "cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write",
	"cap_audit_control", "cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog",
	"cap_wake_alarm", "cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf",
	"cap_checkpoint_restore",
}

// names lists the capabilities in mask, at most five and then a count.
func names(mask uint64) string {
	var out []string
	total := bits.OnesCount64(mask)
	for b := 0; b < 64 && len(out) < 5; b++ {
		if mask&(1<<b) == 0 {
			continue
		}
		if b < len(capNames) {
			out = append(out, capNames[b])
		} else {
			out = append(out, "cap_"+strconv.Itoa(b))
		}
	}
	s := strings.Join(out, ",")
	if total > len(out) {
		s += fmt.Sprintf(" and %d more", total-len(out))
	}
	return s
}
