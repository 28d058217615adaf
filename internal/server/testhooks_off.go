//go:build !relay_testhooks

package server

import "net/http"

// registerTestHooks adds nothing to the shipped binary.
func registerTestHooks(*http.ServeMux) {}
