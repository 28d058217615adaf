package config

import (
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/pyrycode/relay/internal/admission"
)

// FuzzConfigParse feeds Parse arbitrary arguments (NUL-separated, as argv
// cannot contain NUL) and RELAY_* environment (NUL-separated KEY=VALUE).
// Parse must never panic; it either refuses with ErrInvalidConfig/ErrHelp
// or returns a config that validates and whose every timer and limit is
// usable: positive, finite, and within the documented ranges.
func FuzzConfigParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, argv, envv string) {
		var args []string
		if argv != "" {
			args = strings.Split(argv, "\x00")
		}
		env := map[string]string{}
		for _, kv := range strings.Split(envv, "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		if _, ok := env["HOME"]; !ok {
			env["HOME"] = "/home/relay" // keep the default cert cache off the real home
		}
		c, err := Parse(args, func(k string) string { return env[k] }, io.Discard)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) && !errors.Is(err, ErrHelp) {
				t.Fatalf("Parse(%q, %q): error %v is neither ErrInvalidConfig nor ErrHelp", args, envv, err)
			}
			var ce *Error
			var fe *FileError
			if !errors.Is(err, ErrHelp) && !errors.As(err, &ce) && !errors.As(err, &fe) {
				t.Fatalf("Parse(%q): refusal %T is not a *config.Error or *config.FileError", args, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("Parse(%q): refusal is not one line: %q", args, err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q, %q) succeeded but Validate: %v", args, envv, err)
		}
		if err := c.Relay.Validate(); err != nil {
			t.Fatalf("relay options invalid after a successful parse: %v", err)
		}
		checkUsable(t, c)
	})
}

// FuzzConfigFile feeds Parse an arbitrary --config file. It must never
// panic; it refuses with one line naming the file, or returns a config that
// validates and is usable, whatever the file holds.
func FuzzConfigFile(f *testing.F) {
	for _, seed := range []string{
		"max-conns = 100\nupgrade-rate = 2.5\ntrust-proxy = [\"10.0.0.5/32\"]\ndrain-delay = \"3s\"\n",
		"[cluster]\nname = 1\n", "max-conns = = 1", "a.b.c = 1\n", "\"max-conns\" = 1\n", "max-conns = 1\nmax-conns = 2\n",
		"ping-interval = 30\n", "trust-proxy = [1, \"x\"]\n", "max-conns = 1979-05-27T07:32:00Z\n", "\ufeffmax-conns = 1\n",
		"log-level = \"\\u0000\"\n", "# only a comment\n", "",
	} {
		f.Add(seed)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, text string) {
		p := dir + "/relay.toml"
		if err := writeFile(p, text); err != nil {
			t.Fatal(err)
		}
		c, err := Parse([]string{"--config", p, "--insecure-listen", "127.0.0.1:0"}, func(k string) string {
			if k == "HOME" {
				return "/home/relay"
			}
			return ""
		}, io.Discard)
		if err != nil {
			var ce *Error
			var fe *FileError
			if !errors.Is(err, ErrInvalidConfig) || (!errors.As(err, &ce) && !errors.As(err, &fe)) {
				t.Fatalf("refusal %T %v is not a configuration error", err, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("refusal is not one line: %q", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("the file was accepted but Validate: %v", err)
		}
		checkUsable(t, c)
	})
}

func checkUsable(t *testing.T, c Config) {
	t.Helper()
	for name, d := range map[string]int64{
		"read-header-timeout":  int64(c.ReadHeaderTimeout),
		"shutdown-timeout":     int64(c.ShutdownTimeout),
		"proxy-header-timeout": int64(c.ProxyHeaderTimeout),
		"ping-interval":        int64(c.Relay.PingInterval),
		"pong-timeout":         int64(c.Relay.PongTimeout),
		"read-timeout":         int64(c.Relay.ReadTimeout),
		"write-timeout":        int64(c.Relay.WriteTimeout),
		"close-timeout":        int64(c.Relay.CloseTimeout),
		"grace-period":         int64(c.Relay.GracePeriod),
		"probe-timeout":        int64(c.Relay.ProbeTimeout),
		"max-message-bytes":    c.Relay.MaxMessageBytes,
		"phone-queue-bytes":    c.Relay.PhoneQueueBytes,
		"max-phones":           int64(c.Relay.MaxPhones),
		"max-header-bytes":     int64(c.MaxHeaderBytes),
		"max-conns":            int64(c.Admission.MaxConns),
		"max-conns-per-ip":     int64(c.Admission.MaxConnsPerIP),
		"upgrade-burst":        int64(c.Admission.UpgradeBurst),
		"max-tracked-ips":      int64(c.Admission.MaxTrackedIPs),
		"max-sockets":          int64(c.Sockets.Max),
		"max-sockets-per-ip":   int64(c.Sockets.MaxPerIP),
		"idle-timeout":         int64(c.IdleTimeout),
	} {
		if d <= 0 {
			t.Fatalf("--%s = %d accepted", name, d)
		}
	}
	if c.Relay.MaxQueuedBytes < 0 {
		t.Fatalf("--max-queued-bytes = %d accepted", c.Relay.MaxQueuedBytes)
	}
	if r := float64(c.Admission.UpgradeRate); !(r > 0) || math.IsInf(r, 1) {
		t.Fatalf("--upgrade-rate = %v accepted", r)
	}
	if c.Admission.MaxConnsPerIP > c.Admission.MaxConns {
		t.Fatalf("--max-conns-per-ip %d above --max-conns %d", c.Admission.MaxConnsPerIP, c.Admission.MaxConns)
	}
	if c.Admission.MaxTrackedIPs <= c.Admission.MaxConns {
		t.Fatalf("--max-tracked-ips %d not above --max-conns %d", c.Admission.MaxTrackedIPs, c.Admission.MaxConns)
	}
	if _, err := admission.New(c.Admission); err != nil {
		t.Fatalf("admission options invalid after a successful parse: %v", err)
	}
	if err := c.Sockets.Validate(); err != nil || c.Sockets.Max < c.Admission.MaxConns {
		t.Fatalf("socket limits %+v invalid after a successful parse: %v", c.Sockets, err)
	}
	switch c.Mode {
	case ModeInsecure:
		if c.InsecureListen == "" || c.TLSCert != "" || c.Domain != "" {
			t.Fatalf("insecure mode with %+v", c)
		}
	case ModeStatic:
		if c.TLSCert == "" || c.TLSKey == "" || c.InsecureListen != "" || c.Domain != "" {
			t.Fatalf("static mode with %+v", c)
		}
	case ModeAutocert:
		if c.Domain == "" || c.CertCache == "" || c.InsecureListen != "" || c.TLSCert != "" {
			t.Fatalf("autocert mode with %+v", c)
		}
	default:
		t.Fatalf("no mode: %q", c.Mode)
	}
	if c.ProxyProtocol && len(c.Admission.TrustedProxies) == 0 {
		t.Fatalf("--proxy-protocol without --trust-proxy accepted")
	}
	for _, p := range c.Admission.TrustedProxies {
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("--trust-proxy kept %v", p)
		}
	}
}

func writeFile(p, text string) error { return os.WriteFile(p, []byte(text), 0o600) }
