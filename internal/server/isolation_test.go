package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Issue 13 item 3: a non-canonical path used to get the mux's 307 with the
// whole URL, query included, echoed in Location and an HTML body, without
// passing admission. Every one now gets 404 with an empty body, the
// canonical paths still work, and nothing of the request comes back.
func TestNonCanonicalPaths_404EmptyNoEcho(t *testing.T) {
	r := start(t)
	addr := r.srv.Addr("public").String()
	const secret = "SECRET-c4n0n"
	for _, target := range []string{
		"//v1/server?x-pyrycode-token=" + secret + "&a=%3Cb%3E",
		"/v1//client?t=" + secret,
		"/v1/./server?t=" + secret,
		"/x/../v1/client?t=" + secret,
		"//healthz?t=" + secret,
		"/v1/server/..?t=" + secret,
	} {
		t.Run(target, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target, addr)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			require.Equal(t, http.StatusNotFound, resp.StatusCode)
			require.Empty(t, body)
			require.Empty(t, resp.Header.Get("Location"))
			for k, vs := range resp.Header {
				for _, v := range vs {
					require.NotContains(t, k+v, secret)
				}
			}
		})
	}
	resp, err := http.Get(r.base + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// Issue 13 item 4: in static-certificate mode a certificate's IPv6 address
// name must match a Host without a port (`[::1]`, port 443 implied), as it
// already did with one (`[::1]:443`).
func TestHostPolicy_IPv6WithoutPort(t *testing.T) {
	hp := hostPolicy{"::1": true, "relay.example.test": true, "192.0.2.7": true}
	var g hostGate
	g.set(hp)
	h := g.wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }), func(*http.Request) {})
	for host, want := range map[string]int{
		"[::1]":                   http.StatusNoContent,
		"[::1]:443":               http.StatusNoContent,
		"[0:0:0:0:0:0:0:1]":       http.StatusNoContent,
		"relay.example.test":      http.StatusNoContent,
		"Relay.Example.Test.:443": http.StatusNoContent,
		"192.0.2.7":               http.StatusNoContent,
		"[::2]":                   http.StatusMisdirectedRequest,
		"[::2]:443":               http.StatusMisdirectedRequest,
		"other.example.test":      http.StatusMisdirectedRequest,
	} {
		req := mustRequest(t, "GET", "http://placeholder/healthz")
		req.Host = host
		rec := newRecorder()
		h.ServeHTTP(rec, req)
		require.Equalf(t, want, rec.Code, "Host %q", host)
	}
}
