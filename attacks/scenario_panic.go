package attacks

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"time"
)

// Forced panic: a handler panic must become a generic 500 (no stack, no
// error text, no echoed input) with the detail only in the log under an
// incident id, and the process must keep serving. The panic is forced
// through /__testhooks/panic, which exists only in a -tags relay_testhooks
// build; the shipped build answers 404 there.
func forcedPanic() Scenario {
	return Scenario{
		ID:        "ATK-PANIC",
		Title:     "A forced handler panic answers a generic 500 and logs an incident id; the hook is absent from the shipped build",
		Threats:   []string{"TM-LEAK-1"},
		Mode:      LocalOnly,
		LocalOnly: "it needs a test-only build with a panic hook, which the shipped binary lacks (the scenario checks that too)",
		Run:       runPanic,
	}
}

func runPanic(ctx context.Context, t *Target) Result {
	l, skip := localOrSkip(t)
	if skip != nil {
		return *skip
	}
	// The shipped build has no hook.
	shipped, err := l.Start(ctx)
	if err != nil {
		return Failf("start shipped relay: %v", err)
	}
	st := &Target{Base: shipped.URL}
	rr, err := st.rawRequest(ctx, st.buildRequest("GET", "/__testhooks/panic", nil))
	shipped.Stop()
	if err != nil {
		return Failf("shipped build: %v", err)
	}
	if rr.Resp.StatusCode != 404 || len(rr.Body) != 0 {
		return Failf("shipped build answers the test hook with %d %q, want 404 and an empty body", rr.Resp.StatusCode, tail(string(rr.Body), 60))
	}
	var hooks string
	if l.TestHooks != nil {
		if hooks, err = l.TestHooks(); err != nil {
			return CouldNotRunf("building the relay with -tags relay_testhooks: %v", err)
		}
	}
	if hooks == "" {
		return Skipf("no -tags relay_testhooks build available; shipped build's hook path: 404 empty")
	}

	p, err := l.StartBinary(ctx, hooks)
	if err != nil {
		return Failf("start test-hooks relay: %v", err)
	}
	defer p.Stop()
	tt := &Target{Base: p.URL}
	c := canary("panic")
	rr, err = tt.rawRequest(ctx, tt.buildRequest("GET", "/__testhooks/panic?"+c, [][2]string{{"X-Canary", c}, {"User-Agent", c}}))
	if err != nil {
		return Failf("panic request: no HTTP response: %v", err)
	}
	if rr.Resp.StatusCode != 500 {
		return Failf("forced panic answered %d, want 500", rr.Resp.StatusCode)
	}
	if !genericBody(rr.Body) || leakOf(string(rr.All), c) != "" {
		return Failf("500 body leaks detail or echoes input: %q", tail(string(rr.Body), 120))
	}
	if _, _, err := tt.healthz(ctx); err != nil {
		return Failf("relay stopped serving after the panic: %v", err)
	}
	// The client's only handle is X-Incident-Id: it must name the log line
	// of this panic, or an operator cannot find the detail from a report.
	hdrID := rr.Resp.Header.Get("X-Incident-Id")
	if !incidentIDPattern.MatchString(hdrID) {
		return Failf("500 carries X-Incident-Id %q, want an opaque hex id", tail(hdrID, 40))
	}
	var incident string
	pollUntil(ctx, 3*time.Second, 50*time.Millisecond, func() bool {
		incident = incidentID(p.Log())
		return incident != ""
	})
	if incident == "" {
		return Failf(`no log line with "event":"panic" carries an incident id after the panic`)
	}
	if incident != hdrID {
		return Failf("the 500's X-Incident-Id %q is not the incident id %q the panic was logged under", hdrID, incident)
	}
	if leakOf(p.LogText(), c) != "" {
		return Failf("the log carries the request's canary (query or header values)")
	}
	return Passf("forced panic: 500 with %d-byte generic body, nothing echoed, incident %q in X-Incident-Id and the panic's log line, relay still serving; shipped build: 404", len(rr.Body), incident)
}

// incidentIDPattern: an incident id is short opaque hex, never request data.
var incidentIDPattern = regexp.MustCompile(`^[0-9a-f]{8,64}$`)

// incidentID finds the "panic" event's log line and returns the value of
// its key containing "incident".
func incidentID(lines []string) string {
	for _, line := range lines {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["event"] != "panic" {
			continue
		}
		for k, v := range m {
			if strings.Contains(strings.ToLower(k), "incident") {
				if s, ok := v.(string); ok && s != "" {
					return s
				}
			}
		}
	}
	return ""
}
