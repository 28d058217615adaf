package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// healthcheck is `relay healthcheck --url URL`: one GET, exit 0 on 200 and 1
// on anything else (another status, a refused connection, a timeout), 2 on
// a usage error. It exists because the FROM scratch image has no curl: the
// Containerfile's HEALTHCHECK runs it against /readyz.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	target := fs.String("url", "", "URL to GET (required), e.g. http://127.0.0.1:9090/readyz")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of the whole request")
	caFile := fs.String("ca", "", "PEM file of a CA to trust for an https URL (default: the system roots)")
	err := fs.Parse(args)
	if err == nil && fs.NArg() == 1 && fs.Arg(0) == "help" {
		err = flag.ErrHelp
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "usage: relay healthcheck --url URL [--timeout 5s] [--ca FILE]\n  GET URL once: exit 0 on 200, 1 otherwise, 2 on a usage error")
			fs.VisitAll(func(f *flag.Flag) {
				fmt.Fprintf(stdout, "  --%s\n    \t%s (default %q)\n", f.Name, f.Usage, f.DefValue)
			})
			return exitOK
		}
		if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
			return unexpected(stderr, "--"+name, "relay healthcheck takes --url, --timeout and --ca")
		}
		return healthUsage(stderr, err.Error())
	}
	if fs.NArg() > 0 {
		return unexpected(stderr, fs.Arg(0), "relay healthcheck takes --url, --timeout and --ca")
	}
	u, err := url.Parse(*target)
	if *target == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return healthUsage(stderr, "--url needs an http:// or https:// URL, e.g. --url http://127.0.0.1:9090/readyz")
	}
	if *timeout <= 0 {
		return healthUsage(stderr, "--timeout must be positive, e.g. 5s")
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true} // a local probe never goes through HTTPS_PROXY
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		pool := x509.NewCertPool()
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			return healthUsage(stderr, "--ca "+*caFile+": cannot read a PEM certificate from it")
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c := &http.Client{
		Transport: tr,
		Timeout:   *timeout,
		// A redirect is not "ready": the probe names the endpoint it means.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := c.Get(u.String())
	if err != nil {
		fmt.Fprintf(stderr, "relay healthcheck: %s: %v\n", u.Redacted(), err)
		return exitRuntime
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "relay healthcheck: %s: %s\n", u.Redacted(), resp.Status)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "relay healthcheck: %s: %s\n", u.Redacted(), resp.Status)
	return exitOK
}

func healthUsage(stderr io.Writer, problem string) int {
	fmt.Fprintf(stderr, "relay: healthcheck: %s (relay healthcheck -h)\n", problem)
	return exitRefused
}
