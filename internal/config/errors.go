package config

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/pyrycode/relay/internal/fielderr"
)

// Error is a refusal to start: one line that names the flag (or the RELAY_*
// variable, or the configuration file and line, the value came from), the
// refused value, and what is wrong with it, including what a valid value
// looks like. It matches ErrInvalidConfig.
type Error struct {
	// Flag is the flag name without dashes; empty when the refusal is about
	// no single value (a mixture of modes).
	Flag string
	// Value is the refused value as given.
	Value string
	// FromEnv is set when Value came from EnvName(Flag), not the command line.
	FromEnv bool
	// File and Line are set when Value came from the configuration file.
	File string
	Line int
	// Problem follows the value: "must be positive, e.g. 30s".
	Problem string
}

func (e *Error) Error() string {
	switch {
	case e.Flag == "":
		return e.Problem
	case e.File != "":
		return fmt.Sprintf("%s:%d: %s = %s %s", e.File, e.Line, e.Flag, show(e.Value), e.Problem)
	case e.FromEnv:
		return EnvName(e.Flag) + "=" + show(e.Value) + " " + e.Problem
	default:
		return "--" + e.Flag + " " + show(e.Value) + " " + e.Problem
	}
}

// Is makes every *Error match ErrInvalidConfig.
func (e *Error) Is(target error) bool { return target == ErrInvalidConfig }

// Flag names of the embedded options' fields, for rendering their
// packages' *fielderr.Error as a flag.
var (
	relayFlags = map[string]string{
		"PingInterval": "ping-interval", "PongTimeout": "pong-timeout", "ReadTimeout": "read-timeout",
		"WriteTimeout": "write-timeout", "CloseTimeout": "close-timeout", "GracePeriod": "grace-period",
		"ProbeTimeout": "probe-timeout", "MaxMessageBytes": "max-message-bytes", "PhoneQueueBytes": "phone-queue-bytes",
		"MaxQueuedBytes": "max-queued-bytes", "SocketSendBuffer": "socket-send-buffer", "MaxPhones": "max-phones",
	}
	admissionFlags = map[string]string{
		"MaxConns": "max-conns", "MaxConnsPerIP": "max-conns-per-ip", "UpgradeRate": "upgrade-rate",
		"UpgradeBurst": "upgrade-burst", "MaxTrackedIPs": "max-tracked-ips", "TrustedProxies": "trust-proxy",
	}
	socketFlags = map[string]string{"Max": "max-sockets", "MaxPerIP": "max-sockets-per-ip"}
)

// subject is how a refusal names a flag: --name, RELAY_NAME when its value
// came from the environment, or "name (FILE:LINE)" from the file.
func (c *Config) subject(name string) string {
	switch o := c.from[name]; {
	case o.env:
		return EnvName(name)
	case o.file != "":
		return fmt.Sprintf("%s (%s:%d)", name, o.file, o.line)
	}
	return "--" + name
}

func (c *Config) refuse(name string, value any, problem string) *Error {
	o := c.from[name]
	return &Error{Flag: name, Value: fmt.Sprint(value), FromEnv: o.env, File: o.file, Line: o.line, Problem: problem}
}

// FileError is a refusal about a file (or directory) a flag names: the TLS
// pair, the certificate cache, the ACME CA, the FCM key, the NATS
// credentials or CA. It names the flag and its RELAY_* variable, whichever
// set it, and the configuration file's line when that did, so an operator
// knows what to change wherever the value lives:
//
//	--tls-key / RELAY_TLS_KEY: TLS key file: stat /etc/relay/key.pem: no such file or directory
//
// It unwraps to the cause (tlsconf.ErrKeyFileInsecure, ...).
type FileError struct {
	// Flags are the flag names (without dashes) the file was given by:
	// one, or both of a pair (--tls-cert and --tls-key).
	Flags []string
	// Where is "FILE:LINE" when the configuration file set the first flag.
	Where string
	Err   error
}

func (e *FileError) Error() string {
	names := make([]string, len(e.Flags))
	for i, f := range e.Flags {
		names[i] = "--" + f + " / " + EnvName(f)
	}
	s := strings.Join(names, " and ")
	if e.Where != "" {
		s += " (set in " + e.Where + ")"
	}
	return s + ": " + e.Err.Error()
}

func (e *FileError) Unwrap() error { return e.Err }

// Is makes every *FileError match ErrInvalidConfig, as *Error does.
func (e *FileError) Is(target error) bool { return target == ErrInvalidConfig }

// NameFile wraps err, a problem with the file flags name, as a *FileError.
func (c *Config) NameFile(err error, flags ...string) error {
	if err == nil {
		return nil
	}
	fe := &FileError{Flags: flags, Err: err}
	if o := c.from[flags[0]]; o.file != "" {
		fe.Where = fmt.Sprintf("%s:%d", o.file, o.line)
	}
	return fe
}

// must refuses value of flag name: "must be WANT, e.g. DEFAULT".
func (c *Config) must(name string, value any, want string) *Error {
	p := "must be " + want
	if d := defaultOf(name); d != "" && d != "0" && d != "false" {
		p += ", e.g. " + d
	}
	return c.refuse(name, value, p)
}

// mustThan refuses value of flag name against another flag's value.
func (c *Config) mustThan(name string, value any, want, than string, thanValue any) *Error {
	return c.refuse(name, value, fmt.Sprintf("must be %s --%s (%v)", want, than, thanValue))
}

// fieldError renders an options package's *fielderr.Error as the flag that
// sets the field.
func (c *Config) fieldError(err error, flags map[string]string) error {
	var fe *fielderr.Error
	if !errors.As(err, &fe) || flags[fe.Field] == "" {
		return &Error{Problem: oneLine(err.Error())} // a field no flag sets: a bug, still refused
	}
	if fe.Than != "" && flags[fe.Than] != "" {
		return c.mustThan(flags[fe.Field], fe.Value, fe.Want, flags[fe.Than], fe.ThanValue)
	}
	return c.must(flags[fe.Field], fe.Value, fe.Want)
}

// defaults holds every flag's default as `relay serve -h` prints it.
var defaults = sync.OnceValue(func() map[string]string {
	var c Config
	var trust string
	m := map[string]string{}
	newFlagSet(&c, func(string) string { return "" }, &trust, new(flagSink)).VisitAll(func(f *flag.Flag) { m[f.Name] = f.DefValue })
	return m
})

func defaultOf(name string) string { return defaults()[name] }

// flagSink keeps the last value a hinted flag refused: the flag package
// flattens Set's error into a string, so the typed one travels here.
type flagSink struct{ err *Error }

// hinted wraps a flag's value so that a value that does not parse is
// refused with what a valid one looks like.
type hinted struct {
	flag.Value
	name, def string
	sink      *flagSink
}

func (h *hinted) Set(s string) error {
	if err := h.Value.Set(s); err != nil {
		e := &Error{Flag: h.name, Value: s, Problem: h.hint()}
		h.sink.err = e
		return e
	}
	return nil
}

// IsBoolFlag lets --flag stand for --flag=true, as the wrapped value does.
func (h *hinted) IsBoolFlag() bool {
	b, ok := h.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func (h *hinted) String() string {
	if h == nil || h.Value == nil { // the flag package probes zero values
		return ""
	}
	return h.Value.String()
}

// kind names the value's type for the usage: duration, bytes, N, number, bool, string.
func (h *hinted) kind() string {
	g, ok := h.Value.(flag.Getter)
	if !ok {
		return "value"
	}
	switch g.Get().(type) {
	case time.Duration:
		return "duration"
	case bool:
		return "bool"
	case float64:
		return "number"
	case int, int64:
		if strings.HasSuffix(h.name, "-bytes") || strings.HasSuffix(h.name, "-buffer") {
			return "bytes"
		}
		return "N"
	}
	return "string"
}

func (h *hinted) hint() string {
	eg := h.def
	switch h.kind() {
	case "duration":
		return "is not a duration: use a number with a unit, e.g. " + eg
	case "bytes":
		return "is not a whole number of bytes, e.g. " + eg
	case "N":
		return "is not a whole number, e.g. " + eg
	case "number":
		return "is not a number, e.g. " + eg
	case "bool":
		return "is not a boolean: use true or false"
	}
	return "is not valid"
}

// withOrigin marks a refusal as coming from the environment variable or
// the configuration file.
func withOrigin(err error, o origin) error {
	var e *Error
	if errors.As(err, &e) {
		e.FromEnv, e.File, e.Line = o.env, o.file, o.line
		return e
	}
	return err
}

// show renders a value given by the operator: as is when it is plain, else
// quoted with every control character escaped, so a refusal stays one line.
func show(v string) string {
	if v == "" {
		return `""`
	}
	for _, r := range v {
		if !unicode.IsPrint(r) || r == ' ' || r == '"' || r == '\\' {
			return strconv.Quote(v)
		}
	}
	return v
}

// oneLine escapes the control characters of s (an unknown flag's name
// quoted by the flag package) and leaves the rest, quotes included, alone.
func oneLine(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) || r == ' ' {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// flagProblem rewords the flag package's own errors (an unknown flag, a
// flag without its value, bad syntax), which name a flag with one dash and
// say "flag provided but not defined", as the relay's refusals read: the
// flag as an operator types it (--name) and what to do.
func flagProblem(err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + oneLine(name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		p := "--" + oneLine(name) + " needs a value"
		if d := defaultOf(name); d != "" {
			p += ", e.g. --" + name + " " + d
		}
		return p
	}
	if arg, ok := strings.CutPrefix(msg, "bad flag syntax: "); ok {
		return "bad flag syntax " + show(arg) + ": use --name value or --name=value"
	}
	return oneLine(msg)
}
