package attacks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Body leakage: every non-101 answer on the public listener is empty or a
// short fixed phrase. Each request carries a unique canary (path, query,
// header values, body, Host); it must never come back, nor may a Go
// version, a path or an error text. Includes the WebSocket library's own
// refusals (its Connection-header error echoes the header value unless the
// relay suppresses it). /healthz reports counts only, /livez and /readyz
// a fixed "ok", and no metrics or debug endpoint is reachable on the public
// listener.
func bodyLeak() Scenario {
	return Scenario{
		ID:      "ATK-BODY-LEAK",
		Title:   "Malformed, misrouted and non-WebSocket requests get generic bodies that echo nothing",
		Threats: []string{"TM-LEAK-2", "TM-LEAK-3"},
		Mode:    RemoteSafe,
		Bounds:  "about 20 sequential requests, one of them with 1 MiB of headers",
		BehindProxy: ProxyNote{TestsBoth, "malformed requests (request line, method, header line, oversized headers) and paths the " +
			"proxy does not forward are answered by the proxy, whose error answers must be as bare as the relay's; well-formed requests " +
			"reach the relay. A proxy that reads a header line without a colon as an empty header (nginx) forwards that request and the " +
			"relay answers it: this profile then requires only that nothing be echoed"},
		Run: runBodyLeak,
	}
}

type leakCase struct {
	name    string
	raw     []byte
	status  func(int) bool
	isEmpty bool // the protocol says "empty" (404); otherwise a fixed phrase is allowed
	// lenient: a proxy may parse this request leniently and forward it
	// (under --profile behind-proxy a 200 is then the relay's answer to the
	// repaired request, and only the echo checks apply).
	lenient bool
}

func is(code int) func(int) bool { return func(c int) bool { return c == code } }
func is4xx(c int) bool           { return c >= 400 && c < 500 }

func runBodyLeak(ctx context.Context, t *Target) Result {
	c := canary("leak")
	valid := func(path string) [][2]string {
		h := [][2]string{{hdrServerID, newServerID()}, {hdrVersion, "v"}, {hdrToken, "tok-" + c}, {"User-Agent", "ua-" + c}}
		_ = path
		return h
	}
	ws := func(conn, upgrade, version, key string) [][2]string {
		var h [][2]string
		for _, kv := range [][2]string{{"Connection", conn}, {"Upgrade", upgrade}, {"Sec-WebSocket-Version", version}, {"Sec-WebSocket-Key", key}} {
			if kv[1] != "" {
				h = append(h, kv)
			}
		}
		return h
	}
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	host := t.vhost()
	cases := []leakCase{
		{"unknown path", t.buildRequest("GET", "/"+c, nil), is(404), true, false},
		{"unknown path with query", t.buildRequest("GET", "/v1/"+c+"?q="+c, [][2]string{{"X-Any", c}}), is(404), true, false},
		// Non-canonical paths: net/http's mux answers them 307 with the URL,
		// query included, in Location and an HTML body, past admission.
		{"non-canonical upgrade path", t.buildRequest("GET", "//v1/server?x-pyrycode-token="+c+"&a=%3Cb%3E", nil), is(404), true, false},
		{"dot segment in a path", t.buildRequest("GET", "/v1/./client?t="+c, nil), is(404), true, false},
		{"doubled slash before healthz", t.buildRequest("GET", "//healthz?t="+c, nil), is(404), true, false},
		{"metrics on public listener", t.buildRequest("GET", "/metrics", nil), is(404), true, false},
		{"pprof on public listener", t.buildRequest("GET", "/debug/pprof/", nil), is(404), true, false},
		{"expvar on public listener", t.buildRequest("GET", "/debug/vars", nil), is(404), true, false},
		{"test hook in the shipped build", t.buildRequest("GET", "/__testhooks/panic?"+c, nil), is(404), true, false},
		{"POST to /v1/client", []byte(fmt.Sprintf("POST /v1/client HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", host, len(c), c)), is4xx, false, false},
		{"PUT to /v1/server", t.buildRequest("PUT", "/v1/server", valid("/v1/server")), is4xx, false, false},
		{"plain GET /v1/client", t.buildRequest("GET", "/v1/client", valid("/v1/client")), is4xx, false, false},
		{"plain GET /v1/server", t.buildRequest("GET", "/v1/server", valid("/v1/server")), is4xx, false, false},
		{"crafted Connection header", t.buildRequest("GET", "/v1/client", append(valid(""), ws("keep-alive, "+c, "websocket", "13", key)...)), is4xx, false, false},
		{"crafted Upgrade header", t.buildRequest("GET", "/v1/client", append(valid(""), ws("Upgrade", c, "13", key)...)), is4xx, false, false},
		{"crafted WebSocket version", t.buildRequest("GET", "/v1/server", append(valid(""), ws("Upgrade", "websocket", c, key)...)), is4xx, false, false},
		{"missing WebSocket key", t.buildRequest("GET", "/v1/client", append(valid(""), ws("Upgrade", "websocket", "13", "")...)), is4xx, false, false},
		{"crafted WebSocket key", t.buildRequest("GET", "/v1/client", append(valid(""), ws("Upgrade", "websocket", "13", c)...)), is4xx, false, false},
		{"crafted Origin", t.buildRequest("GET", "/v1/client", append(valid(""), append(ws("Upgrade", "websocket", "13", key), [2]string{"Origin", "https://" + c + ".example"})...)), func(int) bool { return true }, false, false},
		{"malformed request line", []byte("GET /" + c + " HTTP/9.9\r\nHost: " + host + "\r\n\r\n"), is4xxOr505, false, false},
		{"garbage method", []byte("G\x01T /" + c + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"), is4xx, false, false},
		{"malformed header line", []byte("GET /healthz HTTP/1.1\r\nHost: " + host + "\r\nBroken" + c + "\r\n\r\n"), is4xx, false, true},
		{"oversized headers", t.buildRequest("GET", "/healthz", [][2]string{{"X-Big", strings.Repeat(c, (1<<20+8192)/len(c))}}), is(431), false, false},
	}
	var forwarded []string // lenient cases a proxy forwarded (behind-proxy only)
	for _, lc := range cases {
		rr, err := t.rawRequest(ctx, lc.raw)
		if err != nil {
			return Failf("%s: no HTTP response: %v", lc.name, err)
		}
		st := rr.Resp.StatusCode
		if st == 101 && lc.name == "crafted Origin" {
			continue // origin checks may be off (protocol §3); the upgrade itself echoes nothing
		}
		if lc.lenient && t.Profile == BehindProxy && st == 200 {
			if leakOf(string(rr.All), c) != "" || bytes.Contains(rr.All, []byte("go1.")) {
				return Failf("%s: forwarded by the proxy, and the answer echoed the canary or names a Go version: %q", lc.name, tail(string(rr.All), 120))
			}
			forwarded = append(forwarded, lc.name)
			continue
		}
		if !lc.status(st) {
			return Failf("%s: status %d", lc.name, st)
		}
		if lc.isEmpty && len(rr.Body) != 0 {
			return Failf("%s: %d body not empty: %q", lc.name, st, tail(string(rr.Body), 80))
		}
		if !genericBody(rr.Body) {
			return Failf("%s: %d body is not a fixed phrase: %q", lc.name, st, tail(string(rr.Body), 80))
		}
		if leakOf(string(rr.All), c) != "" {
			return Failf("%s: response echoed the canary: %q", lc.name, tail(string(rr.All), 120))
		}
		if bytes.Contains(rr.All, []byte("go1.")) {
			return Failf("%s: response names a Go version", lc.name)
		}
	}

	// /healthz: exactly the documented count fields.
	_, body, err := t.healthz(ctx)
	if err != nil {
		return Failf("healthz: %v", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return Failf("healthz body not a JSON object")
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if strings.Join(keys, ",") != "binaries,grace,phones,status,uptime_seconds,version" {
		return Failf("healthz exposes fields %v, want only status,binaries,phones,grace,version,uptime_seconds", keys)
	}
	// The build's version is for the operator; the toolchain's is not.
	if bytes.Contains(body, []byte("go1.")) {
		return Failf("healthz names a Go version: %q", tail(string(body), 120))
	}
	// /livez and /readyz: exactly "ok\n", whatever the request carries
	// (a ready relay: this scenario runs against one that serves). Behind
	// a proxy that does not forward them, its bare 404 is what clients see.
	for _, path := range []string{"/livez", "/readyz"} {
		rr, err := t.rawRequest(ctx, t.buildRequest("GET", path+"?q="+c, [][2]string{{"X-Any", c}}))
		if err != nil {
			return Failf("%s: no HTTP response: %v", path, err)
		}
		st := rr.Resp.StatusCode
		switch {
		case st == 404 && t.Profile == BehindProxy && len(rr.Body) == 0:
		case st != 200:
			return Failf("%s: status %d, want 200 from a serving relay", path, st)
		case string(rr.Body) != "ok\n":
			return Failf("%s: body %q, want exactly \"ok\\n\"", path, tail(string(rr.Body), 80))
		}
		if leakOf(string(rr.All), c) != "" {
			return Failf("%s: response echoed the canary: %q", path, tail(string(rr.All), 120))
		}
	}
	fw := ""
	if len(forwarded) > 0 {
		fw = fmt.Sprintf(" (%s: read leniently and forwarded by the proxy, answered by the relay, nothing echoed)", strings.Join(forwarded, ", "))
	}
	return Passf("%d hostile requests: statuses as expected%s, bodies empty or fixed phrases, canary never echoed; /healthz shows counts only, /livez and /readyz a fixed ok; /metrics, pprof, expvar, test hook: 404", len(cases), fw)
}

func is4xxOr505(c int) bool { return is4xx(c) || c == 505 }
