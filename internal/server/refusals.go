package server

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// refusalLogBudget is how many refusal lines the relay writes per second.
// A flood is refused thousands of times a second; the first lines of each
// second show who and why, and one summary line per second counts the
// rest, so the log stays readable and bounded whatever the flood.
const refusalLogBudget = 20

// refusalLog writes one info line per refused request or socket (reason,
// client address), at most refusalLogBudget per second, and then one
// "refusals_suppressed" line with the number it left out.
type refusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu         sync.Mutex
	window     time.Time // start of the current one-second window
	written    int       // lines written in it
	suppressed int64     // lines left out in it
	flushing   bool      // a summary is scheduled for the window's end
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, now: time.Now}
}

// refused logs one refusal; reason comes from a closed set in code, addr is
// the client address admission charged (never text a client chose).
func (l *refusalLog) refused(reason string, addr netip.Addr) {
	l.mu.Lock()
	now := l.now()
	if now.Sub(l.window) >= time.Second {
		l.window, l.written = now, 0
	}
	if l.written >= refusalLogBudget {
		l.suppressed++
		if !l.flushing {
			l.flushing = true
			time.AfterFunc(l.window.Add(time.Second).Sub(now), l.flush)
		}
		l.mu.Unlock()
		return
	}
	l.written++
	l.mu.Unlock()
	l.log.Info("request refused", "event", "refused", "reason", reason, "remote", addr.String())
}

// flush writes the count of lines left out of the window that just ended.
func (l *refusalLog) flush() {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.flushing = 0, false
	l.mu.Unlock()
	if n > 0 {
		l.log.Info("refusal lines suppressed (over the log budget)", "event", "refusals_suppressed", "count", n)
	}
}
