package server

import (
	"bufio"
	"net"
	"net/http"
)

// genericBodyWriter makes every error response body empty, whoever writes
// it: net/http helpers, the WebSocket library (whose handshake errors quote
// request headers back, e.g. the Connection value) or a future handler that
// calls http.Error(w, err.Error(), …). Status codes and safe headers
// (Retry-After, Allow) pass through; bodies of 2xx and 101 are untouched.
type genericBodyWriter struct {
	http.ResponseWriter
	status int
}

func (g *genericBodyWriter) WriteHeader(code int) {
	if g.status != 0 {
		return
	}
	g.status = code
	if code >= 400 {
		h := g.Header()
		for k := range h {
			switch http.CanonicalHeaderKey(k) {
			case "Retry-After", "Allow", "X-Incident-Id", "Connection":
			default:
				h.Del(k)
			}
		}
		h.Set("Content-Length", "0")
		h.Set("Cache-Control", "no-store")
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *genericBodyWriter) Write(p []byte) (int, error) {
	if g.status == 0 {
		g.WriteHeader(http.StatusOK)
	}
	if g.status >= 400 {
		return len(p), nil // swallowed: no error text leaves the process
	}
	return g.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController and the WebSocket library reach the
// underlying writer (deadlines, Hijack).
func (g *genericBodyWriter) Unwrap() http.ResponseWriter { return g.ResponseWriter }

// Hijack is exposed directly too, for code that type-asserts http.Hijacker.
func (g *genericBodyWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(g.ResponseWriter).Hijack()
}

// Flush passes through for streaming 2xx responses.
func (g *genericBodyWriter) Flush() {
	_ = http.NewResponseController(g.ResponseWriter).Flush()
}

// emptyStatus answers code with an empty body.
func emptyStatus(w http.ResponseWriter, code int) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(code)
}

// withGenericBodies wraps h so that no error body ever carries detail.
func withGenericBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&genericBodyWriter{ResponseWriter: w}, r)
	})
}
