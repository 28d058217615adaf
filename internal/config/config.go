// Package config turns `relay serve` flags, RELAY_* environment variables
// and the --config file into a validated Config. Anything invalid is
// refused before a port is bound (exit 2) with one line that names the
// flag, the RELAY_* variable or the file and line the value came from, and
// says what a valid value looks like.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pyrycode/relay/internal/admission"
	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/push"
	"github.com/pyrycode/relay/internal/relay"
)

// ErrInvalidConfig reports a configuration the relay refuses to start with.
// Every refusal Parse and Validate return is an *Error that matches it with
// errors.Is; its message is one line, fit for stderr.
var ErrInvalidConfig = errors.New("relay: invalid configuration")

// ErrHelp is returned for -h/--help/help after the usage has been printed.
var ErrHelp = flag.ErrHelp

// Mode is how the public listener is served.
type Mode string

const (
	ModeInsecure Mode = "insecure" // plain HTTP: local use or behind a TLS-terminating proxy
	ModeStatic   Mode = "static"   // TLS with an operator-supplied certificate
	ModeAutocert Mode = "autocert" // TLS with ACME (Let's Encrypt) certificates
)

// Config is everything `relay serve` needs. The routing core's and the
// admission layer's options are embedded as their packages define them, so
// their defaults and validation live in one place.
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

	MetricsListen      string // empty = no metrics listener
	MetricsAllowPublic bool   // serve metrics on a non-loopback address

	ReadHeaderTimeout time.Duration
	MaxHeaderBytes    int
	IdleTimeout       time.Duration // keep-alive between plain HTTP requests
	ShutdownTimeout   time.Duration
	DrainDelay        time.Duration // lame duck: /healthz 503 while listeners serve, before the drain

	// Relay is the routing core's options (--ping-interval ... --max-phones).
	Relay relay.Options
	// Admission is the HTTP-level admission control (--max-conns,
	// --max-conns-per-ip, --upgrade-rate, --upgrade-burst, --max-tracked-ips;
	// TrustedProxies is --trust-proxy).
	Admission admission.Options
	// Sockets caps TCP connections at accept (--max-sockets,
	// --max-sockets-per-ip; Trusted is --trust-proxy).
	Sockets admission.SocketLimits
	// Push wakes through FCM (internal/push); off without --fcm-credentials.
	Push push.Options
	// Cluster mode (internal/cluster); off without --cluster-nats.
	Cluster cluster.Options

	ProxyProtocol      bool
	ProxyHeaderTimeout time.Duration

	LogLevel   string
	Production bool // RELAY_PRODUCTION=1: refuse plain HTTP and running as root

	// ConfigFile is --config (or RELAY_CONFIG): the TOML file read before
	// the environment and the command line, and again on SIGHUP.
	ConfigFile string
	// Check is --check: run every start-up validation, print the effective
	// settings, exit (relay serve --check).
	Check bool

	// from says where each flag's value came from when not from the
	// command line (a RELAY_* variable, the file and line), so a refusal
	// names it.
	from map[string]origin
	// settings is every setting's effective value and origin (Settings).
	settings []Setting
}

// origin is where a flag's value came from, when not the command line.
type origin struct {
	env  bool   // its RELAY_* variable
	file string // the configuration file ...
	line int    // ... and the line
}

// Defaults for the settings config owns; the routing core's and the
// admission layer's are relay.Defaults and admission.DefaultOptions.
const (
	DefaultReadHeaderTimeout  = 5 * time.Second
	DefaultMaxHeaderBytes     = 16 << 10 // the protocol's headers fit in a few hundred bytes
	DefaultShutdownTimeout    = 10 * time.Second
	DefaultProxyHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout        = 30 * time.Second
	// DefaultDrainDelay is a few load-balancer health-check intervals at
	// their common 1-2 s: enough for a balancer to see 503 and stop
	// sending new clients before every connection is closed.
	DefaultDrainDelay = 5 * time.Second
)

// Env reads one environment variable; os.Getenv in production, a map in tests.
type Env func(string) string

// EnvName maps a flag name to its environment variable: max-conns -> RELAY_MAX_CONNS.
// The configuration file uses the flag names themselves (file.go).
func EnvName(flagName string) string {
	return "RELAY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// newFlagSet binds every `relay serve` flag to c, whose defaults it sets.
func newFlagSet(c *Config, env Env, trust *string, sink *flagSink) *flag.FlagSet {
	c.Relay = relay.Defaults()
	c.Admission = admission.DefaultOptions()
	c.Sockets = admission.DefaultSocketLimits()
	c.Push = push.Defaults()
	fs := flag.NewFlagSet("relay serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, usage printed by Parse

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
	fs.StringVar(&c.MetricsListen, "metrics-listen", "", "Prometheus /metrics (and /healthz) listen address, e.g. 127.0.0.1:9090 (off when empty)")
	fs.BoolVar(&c.MetricsAllowPublic, "metrics-allow-public", false, "allow --metrics-listen on a non-loopback address (firewall it: anyone who reaches it sees the relay's counts)")

	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", DefaultReadHeaderTimeout, "time allowed to read request headers (slow-loris bound; also the TLS handshake deadline)")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", DefaultMaxHeaderBytes, "largest accepted request header block (431 beyond)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", DefaultIdleTimeout, "how long an idle keep-alive HTTP connection is kept")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", DefaultShutdownTimeout, "drain deadline on SIGINT/SIGTERM (every connection gets 1001)")
	fs.DurationVar(&c.DrainDelay, "drain-delay", DefaultDrainDelay, "on SIGINT/SIGTERM, how long /healthz answers 503 while the listeners keep serving, before the drain (0 skips)")

	o := &c.Relay
	fs.DurationVar(&o.PingInterval, "ping-interval", o.PingInterval, "WebSocket ping interval")
	fs.DurationVar(&o.PongTimeout, "pong-timeout", o.PongTimeout, "pong deadline before closing 1011")
	fs.DurationVar(&o.ReadTimeout, "read-timeout", o.ReadTimeout, "per-message read deadline, from the message's first byte")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", o.WriteTimeout, "how long a write may stay blocked while the peer acknowledges less than 16 KiB (1011 beyond)")
	fs.DurationVar(&o.CloseTimeout, "close-timeout", o.CloseTimeout, "how long a peer the relay closes gets to answer before its socket is dropped")
	fs.DurationVar(&o.GracePeriod, "grace-period", o.GracePeriod, "how long a disconnected binary's slot is kept")
	fs.DurationVar(&o.ProbeTimeout, "probe-timeout", o.ProbeTimeout, "how long a conflicting claim waits for the incumbent's pong")
	fs.Int64Var(&o.MaxMessageBytes, "max-message-bytes", o.MaxMessageBytes, "largest message on either leg (1009 beyond)")
	fs.Int64Var(&o.PhoneQueueBytes, "phone-queue-bytes", o.PhoneQueueBytes, "per-phone outbound queue (1011 backlog full beyond)")
	fs.Int64Var(&o.MaxQueuedBytes, "max-queued-bytes", o.MaxQueuedBytes, "relay-wide ceiling on bytes queued for phones (0 = none)")
	fs.IntVar(&o.SocketSendBuffer, "socket-send-buffer", o.SocketSendBuffer, "kernel send buffer (SO_SNDBUF) per WebSocket, bounding what a stalled peer holds in the kernel (0 = OS default)")
	fs.IntVar(&o.MaxPhones, "max-phones", o.MaxPhones, "phones per server-id (4429 beyond)")
	fs.BoolVar(&o.ForwardV1Token, "forward-v1-token", false, "add the phone's token to its first envelope for v1 daemons (see the threat model)")

	a := &c.Admission
	fs.IntVar(&a.MaxConns, "max-conns", a.MaxConns, "global cap on concurrent WebSocket connections (503 beyond)")
	fs.IntVar(&a.MaxConnsPerIP, "max-conns-per-ip", a.MaxConnsPerIP, "cap on concurrent connections per client IP (429 beyond)")
	fs.Float64Var((*float64)(&a.UpgradeRate), "upgrade-rate", float64(a.UpgradeRate), "sustained upgrade requests per second per client IP (429 beyond)")
	fs.IntVar(&a.UpgradeBurst, "upgrade-burst", a.UpgradeBurst, "upgrade requests a client IP may make in a burst")
	fs.IntVar(&a.MaxTrackedIPs, "max-tracked-ips", a.MaxTrackedIPs, "client IPs the limiter tracks at once (bounds its memory; above --max-conns)")
	fs.IntVar(&c.Sockets.Max, "max-sockets", c.Sockets.Max, "TCP connections per public listener, counted at accept before any byte is read (closed beyond)")
	fs.IntVar(&c.Sockets.MaxPerIP, "max-sockets-per-ip", c.Sockets.MaxPerIP, "TCP connections per client address at accept (trusted proxies exempt; closed beyond)")
	fs.StringVar(trust, "trust-proxy", "", "comma-separated CIDRs of proxies whose X-Forwarded-For / PROXY header is believed")
	fs.BoolVar(&c.ProxyProtocol, "proxy-protocol", false, "expect a PROXY protocol header from --trust-proxy peers on the public listener")
	fs.DurationVar(&c.ProxyHeaderTimeout, "proxy-header-timeout", DefaultProxyHeaderTimeout, "time allowed for a PROXY protocol header")

	pushFlags(fs, &c.Push)
	clusterFlags(fs, &c.Cluster)

	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.ConfigFile, "config", "", "TOML file of settings, keys named as these flags (max-conns = 4096); the environment and the command line override it; reread on SIGHUP")
	fs.BoolVar(&c.Check, "check", false, "run every start-up validation without binding or connecting, print the effective settings, exit 0 or 2")

	// Every value goes through hinted, so a value that does not parse is
	// refused with what a valid one looks like.
	fs.VisitAll(func(f *flag.Flag) { f.Value = &hinted{Value: f.Value, name: f.Name, def: f.DefValue, sink: sink} })
	return fs
}

// Parse parses `relay serve` arguments. Each flag may also be set through
// its RELAY_* environment variable and in the --config file (RELAY_CONFIG);
// the command line wins, then the environment, then the file. For -h,
// --help or a lone "help" argument it prints the usage to usage and returns
// ErrHelp.
func Parse(args []string, env Env, usage io.Writer) (Config, error) {
	if env == nil {
		env = func(string) string { return "" }
	}
	var c Config
	var trust string
	sink := new(flagSink)
	fs := newFlagSet(&c, env, &trust, sink)
	c.from = map[string]origin{}

	// The file first, then the environment, so that the command line
	// overrides both.
	if path := configPath(args, env); path != "" {
		vals, err := readConfigFile(path, fs)
		if err != nil {
			return Config{}, err
		}
		for _, name := range sortedKeys(vals) {
			v := vals[name]
			c.from[name] = origin{file: path, line: v.line}
			if err := fs.Lookup(name).Value.Set(v.raw); err != nil {
				return Config{}, withOrigin(err, c.from[name])
			}
		}
		c.ConfigFile = path
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if notFromEnv[f.Name] {
			return
		}
		if v := env(EnvName(f.Name)); v != "" && err == nil {
			c.from[f.Name] = origin{env: true}
			if serr := f.Value.Set(v); serr != nil {
				err = withOrigin(serr, c.from[f.Name])
			}
		}
	})
	if err != nil {
		return Config{}, err
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(fs, usage)
			return Config{}, ErrHelp
		}
		if sink.err != nil { // a value hinted refused; the flag package flattened it
			return Config{}, sink.err
		}
		// Unknown flag, missing value, bad syntax: reworded, naming the flag.
		return Config{}, &Error{Problem: flagProblem(err) + " (relay serve -h lists the flags)"}
	}
	if fs.NArg() == 1 && fs.Arg(0) == "help" {
		printUsage(fs, usage)
		return Config{}, ErrHelp
	}
	if fs.NArg() > 0 {
		return Config{}, &Error{Problem: fmt.Sprintf("unexpected argument %s", show(fs.Arg(0)))}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true; delete(c.from, f.Name) })
	for name := range c.from {
		set[name] = true
	}
	c.settings = snapshot(fs, c.from, set)

	prefixes, err := c.parseCIDRs(trust)
	if err != nil {
		return Config{}, err
	}
	c.Admission.TrustedProxies = prefixes
	c.Sockets.Trusted = prefixes
	prod, err := parseProduction(env("RELAY_PRODUCTION"))
	if err != nil {
		return Config{}, err
	}
	c.Production = prod
	if err := c.resolveMode(set); err != nil {
		return Config{}, err
	}
	if err := c.validateCluster(set); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// printUsage writes the usage with every flag as --name TYPE, its help and
// its default.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	if w == nil {
		w = os.Stdout
	}
	fmt.Fprintln(w, "usage: relay serve (--domain NAME | --tls-cert FILE --tls-key FILE | --insecure-listen ADDR) [flags]")
	fmt.Fprintln(w, "Every flag can also be set through the environment: --max-conns=N as RELAY_MAX_CONNS=N (the command line wins).")
	fmt.Fprintln(w)
	fs.VisitAll(func(f *flag.Flag) {
		h := f.Value.(*hinted)
		line := "  --" + f.Name
		if k := h.kind(); k != "bool" {
			line += " " + k
		}
		line += "\n    \t" + f.Usage
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			line += " (default " + f.DefValue + ")"
		}
		fmt.Fprintln(w, line)
	})
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

func (c *Config) parseCIDRs(s string) ([]netip.Prefix, error) {
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
				return nil, c.refuse("trust-proxy", part, "is not a CIDR or address: use e.g. 10.0.0.5/32 or 192.168.0.0/16")
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		// An IPv4-mapped prefix (::ffff:127.0.0.0/104) means those IPv4
		// addresses, which every layer sees unmapped; normalised once here
		// so the socket cap, the HTTP admission and the PROXY listener all
		// exempt the same peers.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// IsLoopback reports whether a listen address (host:port) binds loopback
// only: localhost or a loopback IP. An empty host binds every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// parseProduction reads RELAY_PRODUCTION like every other boolean RELAY_*
// variable (1, t, true, TRUE, True, 0, f, false, ...; unset is false). A
// value that is neither refuses the start: it is a security switch, and
// "yes" or "on" silently meaning off would fail open.
func parseProduction(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &Error{Problem: fmt.Sprintf("RELAY_PRODUCTION=%s is not a boolean: use 1 or true (production policy on), 0 or false (off)", show(v))}
	}
	return b, nil
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
		return &Error{Problem: "choose one mode: --domain NAME, --tls-cert FILE --tls-key FILE, or --insecure-listen ADDR"}
	case 1:
	default:
		return &Error{Problem: strings.Join(modes, " and ") + " are mutually exclusive"}
	}
	if c.Mode == ModeStatic && (c.TLSCert == "" || c.TLSKey == "") {
		return &Error{Problem: "--tls-cert and --tls-key go together"}
	}
	if c.Mode != ModeAutocert {
		for _, name := range []string{"http-listen", "cert-cache", "acme-directory", "acme-ca", "acme-email"} {
			if set[name] {
				return &Error{Problem: c.subject(name) + " needs --domain"}
			}
		}
	}
	if c.Mode == ModeInsecure && set["https-listen"] {
		return &Error{Problem: c.subject("https-listen") + " needs --domain or --tls-cert"}
	}
	return nil
}

// Validate checks values and the production policy. Refusals are *Error.
func (c *Config) Validate() error {
	for _, l := range []struct{ name, addr string }{
		{"insecure-listen", c.InsecureListen}, {"https-listen", c.HTTPSListen},
		{"http-listen", c.HTTPListen}, {"metrics-listen", c.MetricsListen},
	} {
		if l.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return c.refuse(l.name, l.addr, "is not host:port: use e.g. 127.0.0.1:8080 or :443")
		}
	}
	if c.MetricsListen != "" && !c.MetricsAllowPublic && !IsLoopback(c.MetricsListen) {
		return c.refuse("metrics-listen", c.MetricsListen, "is not a loopback address: use e.g. 127.0.0.1:9090, or add --metrics-allow-public and firewall it")
	}
	if c.DrainDelay < 0 {
		return c.must("drain-delay", c.DrainDelay, "0 (no lame-duck window) or positive")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read-header-timeout", c.ReadHeaderTimeout}, {"idle-timeout", c.IdleTimeout},
		{"shutdown-timeout", c.ShutdownTimeout}, {"proxy-header-timeout", c.ProxyHeaderTimeout},
	} {
		if d.v <= 0 {
			return c.must(d.name, d.v, "positive")
		}
	}
	if c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 1<<20 {
		return c.must("max-header-bytes", c.MaxHeaderBytes, "1024..1048576")
	}
	if err := c.Relay.Validate(); err != nil {
		return c.fieldError(err, relayFlags)
	}
	if err := c.Admission.Validate(); err != nil {
		return c.fieldError(err, admissionFlags)
	}
	if err := c.Sockets.Validate(); err != nil {
		return c.fieldError(err, socketFlags)
	}
	if err := validatePush(c.Push); err != nil {
		return err
	}
	switch {
	case c.Admission.MaxConnsPerIP > c.Admission.MaxConns: // harmless to admission, but not what anyone means
		return c.mustThan("max-conns-per-ip", c.Admission.MaxConnsPerIP, "at most", "max-conns", c.Admission.MaxConns)
	case c.Sockets.Max < c.Admission.MaxConns:
		return c.mustThan("max-sockets", c.Sockets.Max, "at least", "max-conns", c.Admission.MaxConns)
	case c.Sockets.MaxPerIP < c.Admission.MaxConnsPerIP:
		return c.mustThan("max-sockets-per-ip", c.Sockets.MaxPerIP, "at least", "max-conns-per-ip", c.Admission.MaxConnsPerIP)
	case c.ProxyProtocol && len(c.Admission.TrustedProxies) == 0:
		return &Error{Problem: "--proxy-protocol needs --trust-proxy"}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return c.refuse("log-level", c.LogLevel, "is not a level: use debug, info, warn or error")
	}
	if c.Mode == ModeAutocert && c.CertCache == "" { // the domain itself is checked by tlsconf.NewAutocertManager
		return &Error{Problem: "--cert-cache is required (no home directory to default to)"}
	}
	if c.Production {
		if c.Mode == ModeInsecure {
			return &Error{Problem: "RELAY_PRODUCTION=1 refuses plain HTTP (--insecure-listen)"}
		}
		if os.Geteuid() == 0 {
			return &Error{Problem: "RELAY_PRODUCTION=1 refuses to run as root (grant CAP_NET_BIND_SERVICE instead; see docs/deploy.md)"}
		}
	}
	return nil
}
