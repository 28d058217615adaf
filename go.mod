module github.com/pyrycode/relay

go 1.26.0

require (
	github.com/coder/websocket v1.8.15 // indirect
	github.com/letsencrypt/pebble/v2 v2.10.3 // indirect
	github.com/pires/go-proxyproto v0.15.0 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/time v0.16.0 // indirect
	pgregory.net/rapid v1.3.0 // indirect
)
