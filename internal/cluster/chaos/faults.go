package chaos

import "strings"

// What the short run inside make test holds back while a defect it finds
// is open on main: fault kinds left out of shortFaults, and waivers. The
// lead re-enables them as fixes land (docs/cluster.md, "How it is tested
// under faults"; /work/wt/NOTES/chaos-findings.md has the seeds). Held
// back now: nothing.

// shortFaults are the fault kinds the short run injects.
var shortFaults = AllFaults

// claimAt101 is whether a run holds an accepted claim to be decided by its
// 101 (Params.ClaimAt101): on since a cluster claim is decided before the
// 101, the probe of another instance included (issue 24 defect 10;
// chaos-findings.md, finding 7).
const claimAt101 = true

// Waiver excuses the violations a known, open defect causes, so that a run
// still gates everything else. A waived violation is reported, never
// hidden; CHAOS_STRICT=1 turns every waiver off.
type Waiver struct {
	ID    string // the defect
	Kind  VKind
	Match string // a substring of the violation's What
}

// KnownDefects are the waivers the runs apply by default (none now; the
// short run waived issue 24's defects 8-9, close notices of 1001 for a
// phone that closed itself or that its home closed 1011, until 93323ca).
var KnownDefects = []Waiver{}

// waive splits vs into the violations no waiver excuses and the waived.
func waive(vs []Violation, ws []Waiver) (kept, waived []Violation) {
	for _, v := range vs {
		w := false
		for _, x := range ws {
			if v.Kind == x.Kind && strings.Contains(v.What, x.Match) {
				v.What += " [waived: " + x.ID + "]"
				w = true
				break
			}
		}
		if w {
			waived = append(waived, v)
		} else {
			kept = append(kept, v)
		}
	}
	return kept, waived
}
