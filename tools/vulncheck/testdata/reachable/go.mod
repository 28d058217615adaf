// A deliberately vulnerable module: `make vulncheck` scans it first and
// requires govulncheck to report GO-2022-1059 (golang.org/x/text before
// 0.3.8, reachable through language.ParseAcceptLanguage). If the offline
// database were empty, stale past 2022 or not read at all, this would pass
// and the gate would stop; so a clean result on the relay means something.
module example.test/vulnfixture

go 1.22

require golang.org/x/text v0.3.7
