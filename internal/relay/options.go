package relay

import (
	"errors"
	"fmt"
	"time"

	"github.com/pyrycode/relay/internal/fielderr"
)

// Options configures the routing core. Every field is a flag of `relay serve`.
// Start from Defaults: a zero timer or count is refused by Validate rather
// than read as "no limit" or "the default", so a field forgotten by a caller
// fails loudly at start. MaxQueuedBytes and SocketSendBuffer are the two
// fields whose zero has a meaning, stated on each.
type Options struct {
	// PingInterval is how often the relay pings every connection. Shorter
	// finds dead peers sooner at the cost of a few bytes per connection.
	// A ping may go up to PingInterval/32 (at most 100 ms) early, so that
	// connections due close together share one wake-up (heartbeats).
	PingInterval time.Duration
	// PongTimeout is how long a ping may stay unanswered before the
	// connection is closed 1011. A peer stuck mid-frame cannot answer, so
	// this also bounds a trickled frame header.
	PongTimeout time.Duration
	// ReadTimeout bounds one message from its first frame header to its
	// last byte: a slow sender cannot pin a reader (and its buffer) forever.
	// Idle connections are not affected; the heartbeat covers them.
	ReadTimeout time.Duration
	// WriteTimeout bounds a write's stall: a write blocked this long while
	// the peer acknowledges less than 16 KiB (progressChunk) fails, and its
	// peer is closed 1011 instead of blocking its writer. Progress is what
	// the peer's TCP acknowledges, not what the kernel hands a blocked write
	// (Linux wakes one only once a third of the send buffer is free), so a
	// slow but live reader is not a stall. A stalled write fails at most
	// WriteTimeout/16 late.
	WriteTimeout time.Duration
	// CloseTimeout is how long a peer the relay closes gets to answer the
	// close frame before its socket is dropped. A dead or stalled peer never
	// answers; without this bound each would hold a goroutine and a
	// connection slot for the library's 5 s + 5 s close handshake.
	CloseTimeout time.Duration
	// GracePeriod keeps a server-id's slot after its binary disconnects so
	// a reconnecting daemon does not strand its phones.
	GracePeriod time.Duration
	// ProbeTimeout is how long a conflicting claim waits for the sitting
	// binary to answer a ping before taking over its slot.
	ProbeTimeout time.Duration
	// MaxMessageBytes caps one message on either leg (close 1009). It also
	// caps what one read can make the relay allocate.
	MaxMessageBytes int64
	// PhoneQueueBytes caps the bytes queued for one phone; a phone that
	// falls further behind is closed 1011 so it never slows its binary.
	PhoneQueueBytes int64
	// MaxQueuedBytes caps the bytes queued for all phones together, so many
	// slow phones cannot exhaust memory. At the ceiling the phone with the
	// most releasable bytes relay-wide (queued and in flight; phones already
	// ending skipped) is closed 1011 (as if its own queue were full), its
	// charge released at once, and the frame retried, repeatedly, so a
	// tenant parking stalled phones just under the ceiling cannot get other
	// tenants' phones closed.
	// Zero means no relay-wide ceiling beyond the per-phone cap.
	MaxQueuedBytes int64
	// SocketSendBuffer is the kernel send buffer (SO_SNDBUF) of every
	// WebSocket's TCP socket. Without it Linux lets a stalled peer's unread
	// bytes grow to 4 MiB per socket in the kernel, outside the queue caps
	// above. Smaller bounds memory tighter; too small limits throughput on
	// long links (128 KiB sustains about 10 Mbit/s at 100 ms). Zero leaves
	// the OS default (auto-tuning).
	SocketSendBuffer int
	// MaxPhones caps phones per server-id (close 4429).
	MaxPhones int
	// ForwardV1Token adds the phone's x-pyrycode-token to its first envelope
	// for v1 daemons. Off by default: with it on, whoever holds a server-id
	// (including a squatter who won the claim race) receives the tokens of
	// the phones that join it.
	ForwardV1Token bool
}

// Protocol defaults (protocol §8).
const (
	DefaultPingInterval    = 30 * time.Second
	DefaultPongTimeout     = 30 * time.Second
	DefaultReadTimeout     = 30 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultCloseTimeout    = time.Second
	DefaultGracePeriod     = 30 * time.Second
	DefaultProbeTimeout    = 10 * time.Second
	DefaultMaxMessageBytes = 256 << 10
	DefaultPhoneQueueBytes = 4 << 20
	DefaultMaxPhones       = 16
	DefaultSendBuffer      = 128 << 10
	// DefaultMaxQueuedBytes lets 64 phones sit at a full backlog at once:
	// 256 MiB fits a small VPS with room for the Go heap's overhead.
	DefaultMaxQueuedBytes = 256 << 20
)

// ErrInvalidOptions reports an option value the relay refuses to start with.
var ErrInvalidOptions = errors.New("relay: invalid options")

// Defaults returns the protocol's default options.
func Defaults() Options {
	return Options{
		PingInterval:     DefaultPingInterval,
		PongTimeout:      DefaultPongTimeout,
		ReadTimeout:      DefaultReadTimeout,
		WriteTimeout:     DefaultWriteTimeout,
		CloseTimeout:     DefaultCloseTimeout,
		GracePeriod:      DefaultGracePeriod,
		ProbeTimeout:     DefaultProbeTimeout,
		MaxMessageBytes:  DefaultMaxMessageBytes,
		PhoneQueueBytes:  DefaultPhoneQueueBytes,
		MaxQueuedBytes:   DefaultMaxQueuedBytes,
		MaxPhones:        DefaultMaxPhones,
		SocketSendBuffer: DefaultSendBuffer,
	}
}

// Validate reports the first unusable value as a *fielderr.Error that wraps
// ErrInvalidOptions.
func (o Options) Validate() error {
	bad := func(field string, v any, want string) error {
		return &fielderr.Error{Field: field, Value: v, Want: want, Err: ErrInvalidOptions}
	}
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"PingInterval", o.PingInterval},
		{"PongTimeout", o.PongTimeout},
		{"ReadTimeout", o.ReadTimeout},
		{"WriteTimeout", o.WriteTimeout},
		{"CloseTimeout", o.CloseTimeout},
		{"GracePeriod", o.GracePeriod},
		{"ProbeTimeout", o.ProbeTimeout},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return bad(p.name, p.d, "positive")
		}
	}
	switch {
	case o.MaxMessageBytes < 1024:
		return bad("MaxMessageBytes", o.MaxMessageBytes, "at least 1024")
	case o.PhoneQueueBytes < o.MaxMessageBytes+itemOverhead:
		// A queue must hold one legal frame with its per-item charge, or a
		// maximum-size frame closes an idle phone 1011. MaxQueuedBytes is
		// at least PhoneQueueBytes (below), so it holds one too.
		return bad("PhoneQueueBytes", o.PhoneQueueBytes, fmt.Sprintf("at least --max-message-bytes plus %d, the per-item charge (%d)", itemOverhead, o.MaxMessageBytes+itemOverhead))
	case o.MaxQueuedBytes < 0:
		return bad("MaxQueuedBytes", o.MaxQueuedBytes, "0 (no ceiling) or positive")
	case o.MaxQueuedBytes != 0 && o.MaxQueuedBytes < o.PhoneQueueBytes:
		return &fielderr.Error{Field: "MaxQueuedBytes", Value: o.MaxQueuedBytes, Want: "0 (no ceiling) or at least", Than: "PhoneQueueBytes", ThanValue: o.PhoneQueueBytes, Err: ErrInvalidOptions}
	case o.SocketSendBuffer < 0 || (o.SocketSendBuffer > 0 && o.SocketSendBuffer < 4096):
		return bad("SocketSendBuffer", o.SocketSendBuffer, "0 (OS default) or at least 4096")
	case o.MaxPhones < 1 || o.MaxPhones > 1024:
		return bad("MaxPhones", o.MaxPhones, "1..1024")
	}
	return nil
}
