// Package docs carries the one document a shipped binary needs to show:
// the threat model. `relay attack --report` embeds each threat's entry in
// its HTML page, so the page explains every threat it names on an
// operator's machine, without the repository, exactly as the running
// build was documented.
package docs

import _ "embed"

// ThreatModel is docs/threat-model.md as built.
//
//go:embed threat-model.md
var ThreatModel string
