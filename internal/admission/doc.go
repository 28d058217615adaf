// Package admission decides who may open a connection to the relay.
//
// It owns four defences, each in its own file:
//
//   - clientip.go: which address a request is charged to. The socket peer,
//     unless that peer is a configured trusted proxy, in which case the
//     right-most untrusted X-Forwarded-For entry.
//   - proxy.go: a listener wrapper for the PROXY protocol v2. Trusted peers
//     must send a header, anyone else who sends one is cut off.
//   - controller.go: the HTTP middleware. Per-IP upgrade rate limit (429),
//     per-IP connection cap (429) and relay-wide connection cap (503), all
//     with Retry-After and empty bodies.
//   - table.go: the bounded per-IP state (token bucket + open count) behind
//     those limits, with idle eviction, so a flood of distinct addresses
//     costs at most MaxTrackedIPs entries of memory.
//
// The middleware is path-agnostic: the server decides what goes through it
// (the WebSocket endpoints) and what does not (/healthz).
package admission
