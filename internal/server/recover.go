package server

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/pyrycode/relay/internal/metrics"
)

// withRecovery turns a handler panic into a generic 500. The client gets an
// empty body and an incident id; the log gets the panic value and stack
// under the same id, so an operator can find it without the client ever
// seeing an internal detail.
func withRecovery(h http.Handler, log *slog.Logger, m *metrics.Metrics) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's own "abort this response" signal
			}
			id := incidentID()
			m.Panics.Inc()
			log.Error("handler panic", "event", "panic", "incident", id, "error", panicSummary(v))
			w.Header().Set("X-Incident-Id", id)
			emptyStatus(w, http.StatusInternalServerError)
		}()
		h.ServeHTTP(w, r)
	})
}

// panicSummary names where the panic happened and, for runtime errors
// (which the program itself worded), what it was. Any other panic value may
// carry request input, so only its type is kept.
func panicSummary(v any) string {
	what := fmt.Sprintf("%T", v)
	if re, ok := v.(runtime.Error); ok {
		what = re.Error()
	}
	pcs := make([]uintptr, 32)
	n := runtime.Callers(3, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	afterPanic := false
	for {
		f, more := frames.Next()
		if afterPanic && !strings.HasPrefix(f.Function, "runtime.") {
			return fmt.Sprintf("%s at %s (%s:%d)", what, f.Function, filepath.Base(f.File), f.Line)
		}
		if f.Function == "runtime.gopanic" {
			afterPanic = true
		}
		if !more {
			return what
		}
	}
}

func incidentID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
