package attacks

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"
)

// Header abuse: every missing, empty, repeated, oversized or malformed
// upgrade header gets 400 with an empty body before the WebSocket accept,
// echoes nothing and changes no registry state. A 128-byte server-id (the
// longest valid one) still upgrades, so the check cannot pass by refusing
// everything.
func headerAbuse() Scenario {
	return Scenario{
		ID:      "ATK-HEADER-ABUSE",
		Title:   "Missing, empty, repeated or malformed upgrade headers get 400, empty body, no state change",
		Threats: []string{"TM-ROUTE-2", "TM-LEAK-2"},
		Mode:    RemoteSafe,
		Bounds:  "about 25 sequential HTTP requests, 2 WebSocket connections",
		Run:     runHeaderAbuse,
	}
}

type headerCase struct {
	name, path string
	headers    [][2]string
}

func runHeaderAbuse(ctx context.Context, t *Target) Result {
	tgt, _, stop, err := dedicated(ctx, t)
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()
	var before health
	if t.Local != nil {
		if before, _, err = tgt.healthz(ctx); err != nil {
			return Failf("healthz: %v", err)
		}
	}

	c := canary("hdr")
	id := newServerID() // valid, never claimed
	bin := func(drop string, set ...[2]string) [][2]string {
		h := [][2]string{{hdrServerID, id}, {hdrVersion, "v-" + c}, {"User-Agent", "ua-" + c}}
		return abuseHeaders(h, drop, set)
	}
	ph := func(drop string, set ...[2]string) [][2]string {
		h := [][2]string{{hdrServerID, id}, {hdrToken, "tok-" + c}, {"User-Agent", "ua-" + c}, {hdrDeviceName, "dev-" + c}}
		return abuseHeaders(h, drop, set)
	}
	long := strings.Repeat("a", 129)
	bad := []string{"has space" + c, "slash/" + c, "colon:" + c, "quote\"" + c, "<script>" + c, "pct%2F" + c, "ünïcode" + c, "semi;" + c, long}
	var cases []headerCase
	for _, p := range []struct {
		path string
		mk   func(string, ...[2]string) [][2]string
	}{{"/v1/server", bin}, {"/v1/client", ph}} {
		cases = append(cases,
			headerCase{"missing server-id", p.path, p.mk(hdrServerID)},
			headerCase{"empty server-id", p.path, p.mk("", [2]string{hdrServerID, ""})},
			headerCase{"repeated server-id", p.path, append(p.mk(""), [2]string{hdrServerID, newServerID()})},
			headerCase{"missing user-agent", p.path, p.mk("User-Agent")},
		)
		for _, v := range bad {
			cases = append(cases, headerCase{fmt.Sprintf("server-id %.12q…", v), p.path, p.mk("", [2]string{hdrServerID, v})})
		}
	}
	cases = append(cases,
		headerCase{"missing version", "/v1/server", bin(hdrVersion)},
		headerCase{"missing token", "/v1/client", ph(hdrToken)},
		headerCase{"empty token", "/v1/client", ph("", [2]string{hdrToken, ""})},
	)

	for _, hc := range cases {
		req := tgt.buildRequest("GET", hc.path, append(wsUpgradeHeaders(), hc.headers...))
		rr, err := tgt.rawRequest(ctx, req)
		if err != nil {
			return Failf("%s %s: no HTTP response: %v", hc.path, hc.name, err)
		}
		if rr.Resp.StatusCode != 400 {
			return Failf("%s %s: status %d, want 400", hc.path, hc.name, rr.Resp.StatusCode)
		}
		if len(rr.Body) != 0 {
			return Failf("%s %s: 400 body not empty: %q", hc.path, hc.name, tail(string(rr.Body), 80))
		}
		if leakOf(string(rr.All), c) != "" || bytes.Contains(rr.All, []byte(id)) {
			return Failf("%s %s: response echoed a header value", hc.path, hc.name)
		}
	}

	// No state changed: nobody holds id (a phone is refused 4404) and,
	// locally, the registry counts are unchanged.
	pc, _, err := tgt.dial(ctx, "/v1/client", phoneHeaders(id, "tok"))
	if err != nil {
		return Failf("phone dial for the registry check: %v", err)
	}
	if code := startReader(ctx, pc).closeCode(5 * time.Second); code != 4404 {
		_ = pc.CloseNow()
		return Failf("a refused claim changed the registry: phone on its server-id got close %d, want 4404", code)
	}
	if t.Local != nil {
		var after health
		ok := pollUntil(ctx, 3*time.Second, 50*time.Millisecond, func() bool {
			after, _, err = tgt.healthz(ctx)
			return err == nil && after == before
		})
		if !ok {
			return Failf("registry counts changed: before %+v, after %+v", before, after)
		}
	}

	// Positive control: the longest valid server-id is accepted.
	longID := strings.Repeat("a", 120) + randHex(4)
	bc, _, err := tgt.dial(ctx, "/v1/server", binaryHeaders(longID))
	if err != nil {
		return Failf("valid 128-byte server-id refused: %v", err)
	}
	_ = bc.CloseNow()
	return Passf("%d malformed upgrades: all 400 with empty bodies, nothing echoed, registry unchanged; 128-byte server-id accepted", len(cases))
}

// abuseHeaders drops the header named drop and overrides with set.
func abuseHeaders(h [][2]string, drop string, set [][2]string) [][2]string {
	out := h[:0:0]
	for _, kv := range h {
		if strings.EqualFold(kv[0], drop) {
			continue
		}
		replaced := false
		for _, s := range set {
			if strings.EqualFold(s[0], kv[0]) {
				out = append(out, s)
				replaced = true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}
