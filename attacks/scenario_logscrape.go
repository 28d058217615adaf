package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/coder/websocket"
)

// Log scraping: drive a full session and every error path with unique
// canaries in tokens, payloads, push tokens, paths, queries and header
// values, then read the relay's log. No canary may appear; every line must
// be a JSON object with allowlisted keys only; no string may carry control
// or bidi characters (log injection); a device name crafted to forge a log
// line must come out sanitised. gitleaks scans the log too when installed.
func logScrape() Scenario {
	return Scenario{
		ID:        "ATK-LOG-SCRAPE",
		Title:     "Tokens, payloads and header values never reach the log; every line is allowlisted JSON",
		Threats:   []string{"TM-LOG-1", "TM-LOG-2"},
		Mode:      LocalOnly,
		LocalOnly: "it reads the relay's log, which only its host has",
		Run:       runLogScrape,
	}
}

func runLogScrape(ctx context.Context, t *Target) Result {
	l, skip := localOrSkip(t)
	if skip != nil {
		return *skip
	}
	p, err := l.Start(ctx, "--max-message-bytes", "8192", "--grace-period", "500ms", "--probe-timeout", "1s")
	if err != nil {
		return Failf("start relay: %v", err)
	}
	defer p.Stop()
	tt := &Target{Base: p.URL}

	never := map[string]string{} // canary -> what it stood for
	mk := func(what string) string { c := canary(what); never[c] = what; return c }
	// A token shaped like a GitHub token so that gitleaks would flag it.
	token := "ghp_" + randHex(18)
	never[token] = "device token"
	payload, reply, fcm := mk("payload"), mk("reply"), mk("fcm")
	hdrVal, cookie, auth, query, path := mk("hdr"), mk("cookie"), mk("auth"), mk("query"), mk("path")
	// Allowed in the log only sanitised. HTTP forbids raw CR/LF/ESC in
	// header values, so the injection uses what it allows: tab, C1
	// controls (NEL), bidi overrides, zero-width and line separators.
	device := "dev-" + randHex(4) + "\t{\"level\":\"ERROR\",\"msg\":\"forged\"}\u0085\u202e\u200b\u2028x"

	// 1. A full session.
	s, err := newSession(ctx, tt)
	if err != nil {
		return Failf("session: %v", err)
	}
	defer s.Close()
	h := phoneHeaders(s.ServerID, token)
	h.Set(hdrDeviceName, device)
	h.Set("X-Secret", hdrVal)
	h.Set("Cookie", "session="+cookie)
	h.Set("Authorization", "Bearer "+auth)
	ph, err := s.addPhone(h)
	if err != nil {
		return Failf("phone: %v", err)
	}
	if err := writeJSON(ctx, ph.C, map[string]string{"secret": payload}); err != nil {
		return Failf("phone write: %v", err)
	}
	if err := s.send(ph.ConnID, map[string]string{"secret": reply}); err != nil {
		return Failf("binary write: %v", err)
	}
	// 2. Binary-leg error paths: malformed envelopes, a foreign conn_id, a push wake.
	for _, m := range []string{
		`{"conn_id":"client-` + randHex(8) + `","frame":{"x":"` + mk("foreign") + `"}}`,
		`{"conn_id":"` + mk("connid") + `","frame":{"x":1}}`,
		`{"conn_id":"` + ph.ConnID + `","close_code":1,"frame":{"x":"` + mk("badcode") + `"}}`,
		`not json ` + mk("garbage"),
		`{"push_wake":{"platform":"fcm","token":"` + fcm + `"}}`,
	} {
		_ = s.Bin.Write(ctx, websocket.MessageText, []byte(m))
	}
	// 3. Phone error paths: invalid JSON (1007), binary opcode (1003), oversized (1009).
	for _, bad := range []struct {
		typ  websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte("nope " + mk("badjson"))},
		{websocket.MessageBinary, []byte(`{"x":"` + mk("binop") + `"}`)},
		{websocket.MessageText, []byte(`{"x":"` + mk("big") + strings.Repeat("B", 9000) + `"}`)},
	} {
		bp, err := s.addPhone(phoneHeaders(s.ServerID, token))
		if err != nil {
			return Failf("phone: %v", err)
		}
		_ = bp.C.Write(ctx, bad.typ, bad.data)
		bp.StartReading().closeCode(3 * time.Second)
	}
	// 4. A close directive carrying a frame.
	dp, err := s.addPhone(phoneHeaders(s.ServerID, token))
	if err != nil {
		return Failf("phone: %v", err)
	}
	_ = s.Bin.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"conn_id":%q,"close_code":4401,"frame":{"x":%q}}`, dp.ConnID, mk("directive"))))
	dp.StartReading().closeCode(3 * time.Second)
	// 5. HTTP error paths: bad headers, unknown path and query, phone with no binary.
	for _, raw := range [][]byte{
		tt.buildRequest("GET", "/v1/client", append(wsUpgradeHeaders(), [2]string{hdrServerID, "bad id"}, [2]string{hdrToken, token}, [2]string{"User-Agent", "x"}, [2]string{"X-Secret", hdrVal})),
		tt.buildRequest("GET", "/v1/server", append(wsUpgradeHeaders(), [2]string{hdrServerID, newServerID()}, [2]string{"Authorization", "Bearer " + auth})),
		tt.buildRequest("GET", "/"+path+"?k="+query, [][2]string{{"Cookie", cookie}}),
		tt.buildRequest("GET", "/v1/client?token="+query, [][2]string{{"Connection", "keep-alive, " + hdrVal}, {"Upgrade", "websocket"}, {hdrServerID, s.ServerID}, {hdrToken, token}, {"User-Agent", "x"}}),
	} {
		if _, err := tt.rawRequest(ctx, raw); err != nil {
			return Failf("raw request: %v", err)
		}
	}
	if c, _, err := tt.dial(ctx, "/v1/client", phoneHeaders(newServerID(), token)); err == nil {
		startReader(ctx, c).closeCode(3 * time.Second)
	}
	// 6. A conflicting claim (4409) and a clean shutdown (1001 to every socket).
	if c, _, err := tt.dial(ctx, "/v1/server", binaryHeaders(s.ServerID)); err == nil {
		startReader(ctx, c).closeCode(5 * time.Second)
	}
	// The metrics page, read before shutdown, must not carry them either.
	m, err := newMetricsScraper(ctx, p)
	if err != nil {
		return Failf("metrics: %v", err)
	}
	metricsPage, err := m.text(ctx)
	if err != nil {
		return Failf("metrics: %v", err)
	}
	phR := ph.StartReading()
	if code := p.Stop(); code != 0 {
		return Failf("relay exit code %d after SIGTERM, want 0", code)
	}
	if code := phR.closeCode(3 * time.Second); code != 1001 {
		return Failf("live phone got close %d at shutdown, want 1001", code)
	}

	lines := p.Log()
	if len(lines) < 5 {
		return Failf("only %d log lines: the scenario did not exercise the relay", len(lines))
	}
	all := strings.Join(lines, "\n")
	for c, what := range never {
		if where := leakOf(all, c); where != "" {
			return Failf("log key allowlist (filter.add in internal/logging/handler.go): the log contains the %s canary: %s", what, where)
		}
		if where := leakOf(metricsPage, c); where != "" {
			return Failf("closed metric labels: /metrics contains the %s canary: %s", what, where)
		}
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return Failf("log line %d is not a JSON object: %q", i+1, tail(line, 80))
		}
		if m["msg"] == "forged" {
			return Failf("a device name forged a log line")
		}
		if bad := checkLogValue("", m); bad != "" {
			return Failf("log line %d: %s", i+1, bad)
		}
	}
	deviceSeen := strings.Contains(all, "forged") // the sanitised device name may be logged
	gl := runGitleaks(ctx, l.TempDir, all)
	if strings.HasPrefix(gl, "FAIL") {
		return Failf("%s", gl)
	}
	return Passf("%d log lines after a session, 13 error paths and shutdown: %d canaries absent from log and /metrics, whole and in every 8-character piece; keys allowlisted, no control/bidi characters (device name logged sanitised: %v); %s",
		len(lines), len(never), deviceSeen, gl)
}

// checkLogValue walks a decoded log line: keys on the allowlist (nested
// groups as a.b), strings free of control and format characters.
func checkLogValue(prefix string, v any) string {
	switch x := v.(type) {
	case map[string]any:
		for k, vv := range x {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			if !allowedLogKeys[key] {
				return fmt.Sprintf("key %q is off the allowlist", key)
			}
			if bad := checkLogValue(key, vv); bad != "" {
				return bad
			}
		}
	case []any:
		for _, vv := range x {
			if bad := checkLogValue(prefix, vv); bad != "" {
				return bad
			}
		}
	case string:
		for _, r := range x {
			if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
				return fmt.Sprintf("value of %q carries control/format character %U", prefix, r)
			}
		}
	}
	return ""
}

// runGitleaks scans the log with gitleaks when it is on PATH. It returns
// "FAIL: …" on a finding, otherwise a short note for the evidence.
func runGitleaks(ctx context.Context, dir, log string) string {
	bin, err := exec.LookPath("gitleaks")
	if err != nil {
		return "gitleaks not on PATH (skipped that part)"
	}
	if dir == "" {
		dir = os.TempDir()
	}
	f := filepath.Join(dir, "relay-log-"+randHex(4)+".jsonl")
	if err := os.WriteFile(f, []byte(log), 0o600); err != nil {
		return "FAIL: write log for gitleaks: " + err.Error()
	}
	defer os.Remove(f)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, bin, "dir", f, "--redact", "--no-banner").CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "gitleaks: no findings"
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return "FAIL: gitleaks found secrets in the log: " + tail(string(bytes.TrimSpace(out)), 200)
	default:
		return "FAIL: gitleaks did not run: " + tail(string(out), 200)
	}
}
