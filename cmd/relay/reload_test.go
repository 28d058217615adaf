package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// events returns the log lines of event from index from on.
func (p *proc) eventsFrom(from int, event string) []map[string]any {
	var out []map[string]any
	for _, l := range p.stderrLines()[from:] {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// waitEventFrom waits for event at or after line from and returns the
// index after it.
func (p *proc) waitEventFrom(t *testing.T, from int, event string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lines := p.stderrLines()
		for i := from; i < len(lines); i++ {
			var m map[string]any
			if json.Unmarshal([]byte(lines[i]), &m) == nil && m["event"] == event {
				return i + 1
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q line after line %d", event, from)
	return 0
}

// upgrade dials a binary for serverID and returns the HTTP status (101
// when upgraded; the socket is closed at the test's end).
func upgrade(t *testing.T, addr, serverID string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+addr+"/v1/server", &websocket.DialOptions{HTTPHeader: http.Header{
		"X-Pyrycode-Server": {serverID}, "X-Pyrycode-Version": {"1"}, "User-Agent": {"main_test"}}})
	if err == nil {
		t.Cleanup(func() { _ = c.CloseNow() })
		return resp.StatusCode
	}
	require.NotNil(t, resp, "%v", err)
	return resp.StatusCode
}

// SIGHUP rereads the --config file: the per-IP cap, the log level and the
// drain delay apply in place (a second binary from the same address, 429
// before, is admitted; info lines stop; the lame duck lasts the new
// delay), a changed setting that cannot apply (max-phones) is logged and
// kept, and a file that no longer parses changes nothing.
func TestSIGHUP_RereadsConfig_AppliesInPlace_KeepsTheRest(t *testing.T) {
	conf := writeTOML(t, "insecure-listen = \"127.0.0.1:0\"\nmax-conns-per-ip = 1\nlog-level = \"info\"\ndrain-delay = \"0s\"\n")
	// Not relayEnv's RELAY_DRAIN_DELAY=0s: the variable would override the file.
	p := startRelay(t, relayEnv(t, "RELAY_DRAIN_DELAY="), "serve", "--config", conf)
	addr := p.waitListening(t, "public")

	require.Equal(t, 101, upgrade(t, addr, "srv-a"))
	require.Equal(t, 429, upgrade(t, addr, "srv-b"), "one connection per address")
	p.waitEventFrom(t, 0, "refused") // at info, the 429 is logged (just after it is answered)

	rewrite := func(text string) {
		require.NoError(t, os.WriteFile(conf, []byte(text), 0o644))
	}
	rewrite("insecure-listen = \"127.0.0.1:0\"\nmax-conns-per-ip = 2\nlog-level = \"warn\"\ndrain-delay = \"1s\"\nmax-phones = 4\n")
	mark := len(p.stderrLines())
	p.signal(t, syscall.SIGHUP)
	after := p.waitEventFrom(t, mark, "config_reloaded")
	changed := map[string]any{}
	from := map[string]any{}
	for _, m := range p.eventsFrom(mark, "setting_changed") {
		changed[m["setting"].(string)] = m["setting_value"]
		from[m["setting"].(string)] = m["setting_from"]
	}
	require.Equal(t, map[string]any{"max-conns-per-ip": conf + ":2", "log-level": conf + ":3", "drain-delay": conf + ":4"}, from)
	require.Equal(t, map[string]any{"max-conns-per-ip": "2", "log-level": "warn", "drain-delay": "1s"}, changed)
	kept := p.eventsFrom(mark, "setting_not_reloaded")
	require.Len(t, kept, 1)
	require.Equal(t, "max-phones", kept[0]["setting"])
	require.Equal(t, "4", kept[0]["setting_value"])

	require.Equal(t, 101, upgrade(t, addr, "srv-b"), "the raised per-IP cap applies at once")
	require.Equal(t, 429, upgrade(t, addr, "srv-c"), "at the new cap of 2")

	// A broken file changes nothing. Its refusal (an error) is written; the
	// 429 to srv-c above is not, at warn (it was written before this
	// signal was sent, if at all).
	rewrite("max-conns-per-ip = = 5\n")
	mark2 := len(p.stderrLines())
	p.signal(t, syscall.SIGHUP)
	p.waitEventFrom(t, mark2, "config_reload_refused")
	require.Empty(t, p.eventsFrom(after, "refused"), "info lines written after the level became warn")
	require.Equal(t, 429, upgrade(t, addr, "srv-d"), "the cap stays 2 after a refused reload")

	// Back to info, so the lame duck's line is written.
	rewrite("insecure-listen = \"127.0.0.1:0\"\nmax-conns-per-ip = 2\nlog-level = \"info\"\ndrain-delay = \"1s\"\n")
	mark3 := len(p.stderrLines())
	p.signal(t, syscall.SIGHUP)
	p.waitEventFrom(t, mark3, "config_reloaded")
	require.Empty(t, p.eventsFrom(mark3, "setting_not_reloaded"), "max-phones is back to what runs")

	p.signal(t, syscall.SIGTERM)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	lame := p.eventsFrom(0, "lame_duck")
	require.Len(t, lame, 1, "the reloaded drain delay is used")
	require.Equal(t, 1000.0, lame[0]["duration_ms"])
	requireJSONLogs(t, p.stderrLines())
}
