package push

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"
)

// Options configures FCM push wakes. Every field is a flag of `relay serve`;
// the zero value of a bound means its default (see Defaults).
type Options struct {
	// CredentialsFile is a Google service-account JSON key with the
	// Firebase Cloud Messaging role. Empty turns push off: every wake is
	// counted "disabled". The file must be a regular file owned by the
	// relay's user with no group or world bit: it holds a private key that
	// can message every installation of the app.
	CredentialsFile string
	// Project overrides the key file's project_id (the Firebase project
	// the app belongs to, when the service account lives in another).
	Project string
	// Endpoint is the FCM API's base URL. It must be https, except for a
	// loopback IP (tests), so an access token never crosses a network in
	// the clear. The key file's token_uri obeys the same rule.
	Endpoint string
	// MaxInFlight caps FCM requests running at once, relay-wide. A wake
	// beyond it is dropped ("dropped_inflight"), never queued, so a slow
	// FCM costs at most this many goroutines and sockets. Lower protects
	// the relay more; too low drops legitimate wakes when FCM is slow.
	MaxInFlight int
	// Interval and Burst are each server-id's token bucket: Burst wakes at
	// once, then one per Interval ("dropped_rate" beyond). A binary is
	// anyone who claimed a server-id, so this is what stops a claimer from
	// spamming arbitrary FCM tokens through the relay's project. A daemon
	// needs one wake per sleeping phone, and has at most MaxPhones of them.
	Interval time.Duration
	Burst    int
	// RequestTimeout bounds one wake's FCM call, access-token fetch
	// included, so a hanging FCM frees its in-flight slot.
	RequestTimeout time.Duration
	// MaxServerIDs caps the server-ids with a partly used bucket at once
	// (full buckets are forgotten). Beyond it a wake from a new server-id
	// is "dropped_rate": the table's memory stays bounded however many
	// server-ids are claimed.
	MaxServerIDs int
}

// Defaults for the bounds.
const (
	DefaultEndpoint       = "https://fcm.googleapis.com"
	DefaultMaxInFlight    = 32
	DefaultInterval       = 10 * time.Second
	DefaultBurst          = 6
	DefaultRequestTimeout = 10 * time.Second
	DefaultMaxServerIDs   = 65536
	// MaxTokenBytes is the longest push token accepted. FCM registration
	// tokens are about 160 bytes; the cap keeps a binary from making the
	// relay send (and FCM log) kilobytes of junk per wake.
	MaxTokenBytes = 4096
	// MaxRetryAfter caps how long one FCM Retry-After pauses push.
	MaxRetryAfter = 10 * time.Minute
	// DefaultRetryAfter is the pause after a 429/503 without Retry-After.
	DefaultRetryAfter = 10 * time.Second
)

// Defaults returns push off with the default bounds.
func Defaults() Options {
	return Options{
		Endpoint:       DefaultEndpoint,
		MaxInFlight:    DefaultMaxInFlight,
		Interval:       DefaultInterval,
		Burst:          DefaultBurst,
		RequestTimeout: DefaultRequestTimeout,
		MaxServerIDs:   DefaultMaxServerIDs,
	}
}

// Enabled reports whether push wakes are sent at all.
func (o Options) Enabled() bool { return o.CredentialsFile != "" }

// ErrInvalidOptions reports a push option the relay refuses to start with.
var ErrInvalidOptions = errors.New("push: invalid options")

// Validate reports the first unusable value, wrapped in ErrInvalidOptions.
// Zero bounds are filled with defaults by New, not refused.
func (o Options) Validate() error {
	switch {
	case o.MaxInFlight < 0 || o.MaxInFlight > 4096:
		return fmt.Errorf("%w: --push-max-in-flight must be 0 (default) or 1..4096, got %d", ErrInvalidOptions, o.MaxInFlight)
	case o.Interval < 0:
		return fmt.Errorf("%w: --push-interval must not be negative, got %v", ErrInvalidOptions, o.Interval)
	case o.Burst < 0:
		return fmt.Errorf("%w: --push-burst must not be negative, got %d", ErrInvalidOptions, o.Burst)
	case o.RequestTimeout < 0:
		return fmt.Errorf("%w: --push-timeout must not be negative, got %v", ErrInvalidOptions, o.RequestTimeout)
	case o.MaxServerIDs < 0:
		return fmt.Errorf("%w: --push-max-server-ids must not be negative, got %d", ErrInvalidOptions, o.MaxServerIDs)
	}
	if !o.Enabled() && o.Project != "" {
		return fmt.Errorf("%w: --fcm-project needs --fcm-credentials", ErrInvalidOptions)
	}
	if o.Endpoint != "" {
		if err := checkURL(o.Endpoint); err != nil {
			return fmt.Errorf("%w: --fcm-endpoint %v", ErrInvalidOptions, err)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	d := Defaults()
	if o.Endpoint == "" {
		o.Endpoint = d.Endpoint
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = d.MaxInFlight
	}
	if o.Interval == 0 {
		o.Interval = d.Interval
	}
	if o.Burst == 0 {
		o.Burst = d.Burst
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = d.RequestTimeout
	}
	if o.MaxServerIDs == 0 {
		o.MaxServerIDs = d.MaxServerIDs
	}
	return o
}

// errBadURL is wrapped by checkURL.
var errBadURL = errors.New("must be an https URL (http only to a loopback IP)")

// checkURL accepts https URLs, and http to a loopback IP literal (test
// servers): a bearer token or a signed assertion must not cross a network
// in the clear. The URL itself is operator input, so it may be quoted.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil {
		return fmt.Errorf("%q %w", raw, errBadURL)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("%q %w", raw, errBadURL)
}
