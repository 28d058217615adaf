//go:build relay_testhooks

package server

import "net/http"

// registerTestHooks adds GET /__testhooks/panic, which panics inside the
// handler chain so the attack suite can prove that a panic answers a
// generic 500. Only binaries built with -tags relay_testhooks have it.
func registerTestHooks(mux *http.ServeMux) {
	mux.HandleFunc("GET /__testhooks/panic", func(http.ResponseWriter, *http.Request) {
		panic("testhook: forced panic")
	})
}
