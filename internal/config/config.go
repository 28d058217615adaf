// Package config turns `relay serve` flags and RELAY_* environment variables
// into a validated Config. Anything invalid is refused before a port is
// bound (exit 2).
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pyrycode/relay/internal/push"
	"github.com/pyrycode/relay/internal/relay"
)

// ErrInvalidConfig reports a configuration the relay refuses to start with.
// Its message is one line, fit for stderr.
var ErrInvalidConfig = errors.New("relay: invalid configuration")

// ErrHelp is returned for -h/--help after the usage has been printed.
var ErrHelp = flag.ErrHelp

// Mode is how the public listener is served.
type Mode string

const (
	ModeInsecure Mode = "insecure" // plain HTTP: local use or behind a TLS-terminating proxy
	ModeStatic   Mode = "static"   // TLS with an operator-supplied certificate
	ModeAutocert Mode = "autocert" // TLS with ACME (Let's Encrypt) certificates
)

// Config is everything `relay serve` needs.
type Config struct {
	Mode Mode

	InsecureListen string // ModeInsecure
	HTTPSListen    string // ModeStatic, ModeAutocert
	HTTPListen     string // ModeAutocert: ACME HTTP-01 challenges only
	TLSCert        string // ModeStatic
	TLSKey         string // ModeStatic
	Domain         string // ModeAutocert
	CertCache      string // ModeAutocert
	ACMEDirectory  string // ModeAutocert; empty = Let's Encrypt production
	ACMECA         string // ModeAutocert; extra root for the ACME server (tests)
	ACMEEmail      string // ModeAutocert; optional contact

	MetricsListen string // empty = no metrics listener

	ReadHeaderTimeout time.Duration
	MaxHeaderBytes    int
	ShutdownTimeout   time.Duration

	Relay relay.Options

	// Push wakes through FCM (internal/push); off without --fcm-credentials.
	Push push.Options

	// Admission control (internal/admission).
	MaxConns           int
	MaxConnsPerIP      int
	MaxSockets         int // TCP sockets per public listener, counted at accept
	MaxSocketsPerIP    int
	IdleTimeout        time.Duration // keep-alive between plain HTTP requests
	UpgradeRate        float64       // upgrades per second per IP
	UpgradeBurst       int
	MaxTrackedIPs      int
	TrustProxy         []netip.Prefix
	ProxyProtocol      bool
	ProxyHeaderTimeout time.Duration

	LogLevel   string
	Production bool // RELAY_PRODUCTION=1: refuse plain HTTP and running as root
}

// Defaults for the non-relay settings.
const (
	DefaultReadHeaderTimeout  = 5 * time.Second
	DefaultMaxHeaderBytes     = 16 << 10 // the protocol's headers fit in a few hundred bytes
	DefaultShutdownTimeout    = 10 * time.Second
	DefaultProxyHeaderTimeout = 5 * time.Second
	// Admission defaults sized for a small VPS (1–2 vCPU, 1–2 GiB): see docs/deploy.md.
	DefaultMaxConns      = 4096
	DefaultMaxConnsPerIP = 64
	// Sockets are counted before any byte is read (idle keep-alives, slow
	// headers, TLS handshakes, /healthz): twice the WebSocket caps leaves
	// room for those while one host still cannot hold the process's fds.
	DefaultMaxSockets      = 2 * DefaultMaxConns
	DefaultMaxSocketsPerIP = 2 * DefaultMaxConnsPerIP
	DefaultIdleTimeout     = 30 * time.Second
	DefaultUpgradeRate     = 2.0
	DefaultUpgradeBurst    = 20
	DefaultMaxTrackedIPs   = 65536
)

// Env reads one environment variable; os.Getenv in production, a map in tests.
type Env func(string) string

// envName maps a flag name to its environment variable: max-conns -> RELAY_MAX_CONNS.
func envName(flagName string) string {
	return "RELAY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses `relay serve` arguments. Each flag may also be set through
// its RELAY_* environment variable; the command line wins.
func Parse(args []string, env Env, usage io.Writer) (Config, error) {
	if env == nil {
		env = func(string) string { return "" }
	}
	c := Config{Relay: relay.Defaults(), Push: push.Defaults()}
	fs := flag.NewFlagSet("relay serve", flag.ContinueOnError)
	// The flag package prints a parse error followed by the whole usage,
	// which would bury the one refusal line the caller prints. Buffer it and
	// show the usage for -h/--help only; the error itself is returned.
	var flagOut bytes.Buffer
	fs.SetOutput(&flagOut)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: relay serve (--domain NAME | --tls-cert FILE --tls-key FILE | --insecure-listen ADDR) [flags]")
		fmt.Fprintln(fs.Output(), "Every flag can also be set through the environment: --max-conns=N as RELAY_MAX_CONNS=N (the command line wins).")
		fs.PrintDefaults()
	}

	fs.StringVar(&c.InsecureListen, "insecure-listen", "", "plain-HTTP listen address (local use, or behind a TLS-terminating proxy)")
	fs.StringVar(&c.HTTPSListen, "https-listen", ":443", "HTTPS listen address (TLS modes)")
	fs.StringVar(&c.HTTPListen, "http-listen", ":80", "ACME HTTP-01 challenge listen address (--domain mode)")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "certificate chain PEM file (static TLS mode)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "private key PEM file (static TLS mode)")
	fs.StringVar(&c.Domain, "domain", "", "serve this domain with ACME (Let's Encrypt) certificates")
	fs.StringVar(&c.CertCache, "cert-cache", defaultCertCache(env), "certificate cache directory (must be 0700; created if missing)")
	fs.StringVar(&c.ACMEDirectory, "acme-directory", "", "ACME directory URL (default: Let's Encrypt production)")
	fs.StringVar(&c.ACMECA, "acme-ca", "", "PEM file of an extra CA to trust for the ACME server (testing)")
	fs.StringVar(&c.ACMEEmail, "acme-email", "", "contact address given to the ACME CA (optional)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "Prometheus /metrics listen address, e.g. 127.0.0.1:9090 (off when empty)")

	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", DefaultReadHeaderTimeout, "time allowed to read request headers (slow-loris bound; also the TLS handshake deadline)")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", DefaultMaxHeaderBytes, "largest accepted request header block (431 beyond)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "drain deadline on SIGINT/SIGTERM (every connection gets 1001)")

	o := &c.Relay
	fs.DurationVar(&o.PingInterval, "ping-interval", o.PingInterval, "WebSocket ping interval")
	fs.DurationVar(&o.PongTimeout, "pong-timeout", o.PongTimeout, "pong deadline before closing 1011")
	fs.DurationVar(&o.ReadTimeout, "read-timeout", o.ReadTimeout, "per-message read deadline, from the message's first byte")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", o.WriteTimeout, "per-write timeout")
	fs.DurationVar(&o.CloseTimeout, "close-timeout", o.CloseTimeout, "how long a peer the relay closes gets to answer before its socket is dropped")
	fs.DurationVar(&o.GracePeriod, "grace-period", o.GracePeriod, "how long a disconnected binary's slot is kept")
	fs.DurationVar(&o.ProbeTimeout, "probe-timeout", o.ProbeTimeout, "how long a conflicting claim waits for the incumbent's pong")
	fs.Int64Var(&o.MaxMessageBytes, "max-message-bytes", o.MaxMessageBytes, "largest message on either leg (1009 beyond)")
	fs.Int64Var(&o.PhoneQueueBytes, "phone-queue-bytes", o.PhoneQueueBytes, "per-phone outbound queue (1011 backlog full beyond)")
	fs.Int64Var(&o.MaxQueuedBytes, "max-queued-bytes", o.MaxQueuedBytes, "relay-wide ceiling on bytes queued for phones (0 = none)")
	fs.IntVar(&o.SocketSendBuffer, "socket-send-buffer", o.SocketSendBuffer, "kernel send buffer (SO_SNDBUF) per WebSocket, bounding what a stalled peer holds in the kernel (0 = OS default)")
	fs.IntVar(&o.MaxPhones, "max-phones", o.MaxPhones, "phones per server-id (4429 beyond)")
	fs.BoolVar(&o.ForwardV1Token, "forward-v1-token", false, "add the phone's token to its first envelope for v1 daemons (see the threat model)")

	fs.IntVar(&c.MaxConns, "max-conns", DefaultMaxConns, "global cap on concurrent WebSocket connections (503 beyond)")
	fs.IntVar(&c.MaxConnsPerIP, "max-conns-per-ip", DefaultMaxConnsPerIP, "cap on concurrent connections per client IP (429 beyond)")
	fs.IntVar(&c.MaxSockets, "max-sockets", DefaultMaxSockets, "TCP connections per public listener, counted at accept before any byte is read (closed beyond)")
	fs.IntVar(&c.MaxSocketsPerIP, "max-sockets-per-ip", DefaultMaxSocketsPerIP, "TCP connections per client address at accept (trusted proxies exempt; closed beyond)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", DefaultIdleTimeout, "how long an idle keep-alive HTTP connection is kept")
	fs.Float64Var(&c.UpgradeRate, "upgrade-rate", DefaultUpgradeRate, "sustained upgrade requests per second per client IP (429 beyond)")
	fs.IntVar(&c.UpgradeBurst, "upgrade-burst", DefaultUpgradeBurst, "upgrade requests a client IP may make in a burst")
	fs.IntVar(&c.MaxTrackedIPs, "max-tracked-ips", DefaultMaxTrackedIPs, "client IPs the limiter tracks at once (bounds its memory)")
	var trust string
	fs.StringVar(&trust, "trust-proxy", "", "comma-separated CIDRs of proxies whose X-Forwarded-For / PROXY header is believed")
	fs.BoolVar(&c.ProxyProtocol, "proxy-protocol", false, "expect a PROXY protocol header from --trust-proxy peers on the public listener")
	fs.DurationVar(&c.ProxyHeaderTimeout, "proxy-header-timeout", DefaultProxyHeaderTimeout, "time allowed for a PROXY protocol header")

	pushFlags(fs, &c.Push)

	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")

	// Environment first, so that the command line overrides it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := env(envName(f.Name)); v != "" && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%w: %s: %s", ErrInvalidConfig, envName(f.Name), oneLine(err.Error()))
			}
		}
	})
	if envErr != nil {
		return Config{}, envErr
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			if usage == nil {
				usage = os.Stderr
			}
			_, _ = usage.Write(flagOut.Bytes())
			return Config{}, ErrHelp
		}
		return Config{}, fmt.Errorf("%w: %s", ErrInvalidConfig, oneLine(err.Error()))
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("%w: unexpected argument %q", ErrInvalidConfig, fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fs.VisitAll(func(f *flag.Flag) {
		if env(envName(f.Name)) != "" {
			set[f.Name] = true
		}
	})

	prefixes, err := parseCIDRs(trust)
	if err != nil {
		return Config{}, err
	}
	c.TrustProxy = prefixes
	c.Production = env("RELAY_PRODUCTION") == "1"
	if err := c.resolveMode(set); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// oneLine escapes control characters so that a refusal built from input
// (an unknown flag's name) stays one line on stderr.
func oneLine(s string) string {
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

func defaultCertCache(env Env) string {
	home := env("HOME")
	if home == "" {
		if h, err := os.UserHomeDir(); err == nil {
			home = h
		}
	}
	if home == "" {
		return ""
	}
	return filepath.Join(home, ".pyrycode-relay", "certs")
}

func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			// A bare address means just that host.
			a, aerr := netip.ParseAddr(part)
			if aerr != nil {
				return nil, fmt.Errorf("%w: --trust-proxy: %q is not a CIDR or address", ErrInvalidConfig, part)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// resolveMode picks the one serving mode and refuses mixtures.
func (c *Config) resolveMode(set map[string]bool) error {
	var modes []string
	if c.InsecureListen != "" {
		modes = append(modes, "--insecure-listen")
		c.Mode = ModeInsecure
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		modes = append(modes, "--tls-cert/--tls-key")
		c.Mode = ModeStatic
	}
	if c.Domain != "" {
		modes = append(modes, "--domain")
		c.Mode = ModeAutocert
	}
	switch len(modes) {
	case 0:
		return fmt.Errorf("%w: choose one mode: --domain NAME, --tls-cert FILE --tls-key FILE, or --insecure-listen ADDR", ErrInvalidConfig)
	case 1:
	default:
		return fmt.Errorf("%w: %s are mutually exclusive", ErrInvalidConfig, strings.Join(modes, " and "))
	}
	if c.Mode == ModeStatic && (c.TLSCert == "" || c.TLSKey == "") {
		return fmt.Errorf("%w: --tls-cert and --tls-key go together", ErrInvalidConfig)
	}
	if c.Mode != ModeAutocert {
		for _, name := range []string{"http-listen", "cert-cache", "acme-directory", "acme-ca", "acme-email"} {
			if set[name] {
				return fmt.Errorf("%w: --%s needs --domain", ErrInvalidConfig, name)
			}
		}
	}
	if c.Mode == ModeInsecure && set["https-listen"] {
		return fmt.Errorf("%w: --https-listen needs --domain or --tls-cert", ErrInvalidConfig)
	}
	return nil
}

// Validate checks values and the production policy.
func (c *Config) Validate() error {
	if err := c.Relay.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, strings.TrimPrefix(err.Error(), relay.ErrInvalidOptions.Error()+": "))
	}
	if err := validatePush(c.Push); err != nil {
		return err
	}
	for _, l := range []struct{ name, addr string }{
		{"insecure-listen", c.InsecureListen}, {"https-listen", c.HTTPSListen},
		{"http-listen", c.HTTPListen}, {"metrics-listen", c.MetricsListen},
	} {
		if l.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return fmt.Errorf("%w: --%s %q is not host:port", ErrInvalidConfig, l.name, l.addr)
		}
	}
	switch {
	case c.ReadHeaderTimeout <= 0:
		return fmt.Errorf("%w: --read-header-timeout must be positive", ErrInvalidConfig)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("%w: --shutdown-timeout must be positive", ErrInvalidConfig)
	case c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20:
		return fmt.Errorf("%w: --max-header-bytes must be 1024..1048576", ErrInvalidConfig)
	case c.MaxConns < 1:
		return fmt.Errorf("%w: --max-conns must be at least 1", ErrInvalidConfig)
	case c.MaxConnsPerIP < 1 || c.MaxConnsPerIP > c.MaxConns:
		return fmt.Errorf("%w: --max-conns-per-ip must be 1..--max-conns", ErrInvalidConfig)
	case c.MaxSockets < c.MaxConns:
		return fmt.Errorf("%w: --max-sockets must be at least --max-conns", ErrInvalidConfig)
	case c.MaxSocketsPerIP < c.MaxConnsPerIP || c.MaxSocketsPerIP > c.MaxSockets:
		return fmt.Errorf("%w: --max-sockets-per-ip must be between --max-conns-per-ip and --max-sockets", ErrInvalidConfig)
	case c.IdleTimeout <= 0:
		return fmt.Errorf("%w: --idle-timeout must be positive", ErrInvalidConfig)
	case !(c.UpgradeRate > 0) || math.IsInf(c.UpgradeRate, 1): // NaN fails every comparison
		return fmt.Errorf("%w: --upgrade-rate must be a positive number", ErrInvalidConfig)
	case c.UpgradeBurst < 1:
		return fmt.Errorf("%w: --upgrade-burst must be at least 1", ErrInvalidConfig)
	case c.MaxTrackedIPs < 1:
		return fmt.Errorf("%w: --max-tracked-ips must be at least 1", ErrInvalidConfig)
	case c.ProxyHeaderTimeout <= 0:
		return fmt.Errorf("%w: --proxy-header-timeout must be positive", ErrInvalidConfig)
	case c.ProxyProtocol && len(c.TrustProxy) == 0:
		return fmt.Errorf("%w: --proxy-protocol needs --trust-proxy", ErrInvalidConfig)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("%w: --log-level must be debug, info, warn or error", ErrInvalidConfig)
	}
	if c.Mode == ModeAutocert { // the domain itself is checked by tlsconf.NewAutocertManager
		if c.CertCache == "" {
			return fmt.Errorf("%w: --cert-cache is required (no home directory to default to)", ErrInvalidConfig)
		}
	}
	if c.Production {
		if c.Mode == ModeInsecure {
			return fmt.Errorf("%w: RELAY_PRODUCTION=1 refuses plain HTTP (--insecure-listen)", ErrInvalidConfig)
		}
		if os.Geteuid() == 0 {
			return fmt.Errorf("%w: RELAY_PRODUCTION=1 refuses to run as root (grant CAP_NET_BIND_SERVICE instead; see docs/deploy.md)", ErrInvalidConfig)
		}
	}
	return nil
}
