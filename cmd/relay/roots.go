package main

// The container image is FROM scratch: no /etc/ssl/certs. The ACME client
// (autocert, talking to Let's Encrypt over HTTPS) and `relay attack` still
// need CA roots, so a copy of the Mozilla root set is compiled in. Go uses
// it only when the system has no roots of its own; on a normal host the
// system's (updated by the OS) win.
import _ "golang.org/x/crypto/x509roots/fallback"
