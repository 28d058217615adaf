package chaos

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// T is a time in a run: the monotonic time since the run started.
type T = time.Duration

// forever stands for "not yet" in an interval's end.
const forever = T(1<<63 - 1)

// Role is what a connection is.
type Role int

// Roles.
const (
	Binary Role = iota
	Phone
)

func (r Role) String() string {
	if r == Binary {
		return "binary"
	}
	return "phone"
}

// Close codes the checker names (docs/protocol.md §6, docs/cluster.md).
const (
	codeNormal    = 1000
	codeGoingAway = 1001
	codeAbnormal  = 1006 // no close frame: the socket dropped
	codeInternal  = 1011
	codeTryAgain  = 1013
	codeNoBinary  = 4404
	codeConflict  = 4409
	codeTooMany   = 4429
	// codeVanish is SelfCode for a client that dropped its socket without
	// a close frame.
	codeVanish = -1
)

// Conn is one WebSocket the harness opened, as its client saw it.
type Conn struct {
	ID     int
	Role   Role
	Tenant string
	Inst   int // the instance it dialled
	// Squatter: a binary dialled for a server-id whose daemon held a
	// connection already (a restarted daemon, or another one).
	Squatter bool
	Dial     T
	Upgraded T // the 101 arrived; 0: the dial failed (DialErr)
	DialErr  string
	// Ended is when the client saw the connection end (a close frame or a
	// read error); 0: open when the history was taken.
	Ended  T
	Code   int // close code received; codeAbnormal without a close frame
	Reason string
	// SelfClose is when the harness started closing it (0: never), with
	// SelfCode (codeVanish: the socket dropped without a close frame).
	SelfClose T
	SelfCode  int
	// Accepted: a binary the relay logged binary_claimed for, at
	// ClaimedAt (the log line's time, rounded up).
	Accepted  bool
	ClaimedAt T
}

// ended reports whether c ended before t.
func (c *Conn) endedBy(t T) bool { return c.Ended != 0 && c.Ended <= t }

// end is c's end, or forever.
func (c *Conn) end() T {
	if c.Ended == 0 {
		return forever
	}
	return c.Ended
}

// relayClosed reports whether the relay (not the harness) ended c: the
// code it received is the relay's.
func (c *Conn) relayClosed() bool {
	return c.Ended != 0 && (c.SelfClose == 0 || c.SelfClose > c.Ended)
}

// Payload is what every frame carries, as JSON: its tenant, the phone of
// its stream, the binary (down frames), its sequence number in the stream
// and its send time. Forged marks a rogue instance's forgery.
type Payload struct {
	Tenant string `json:"t"`
	Phone  int    `json:"p"`
	Binary int    `json:"b,omitempty"`
	Seq    int    `json:"s"`
	Sent   int64  `json:"n"`
	Forged bool   `json:"rogue,omitempty"`
	Pad    string `json:"x,omitempty"`
}

// Delivery is one frame a client received.
type Delivery struct {
	Up     bool // phone -> binary
	To     int  // the receiving connection
	P      Payload
	ConnID string // up: the envelope's conn_id
	Recv   T
	Size   int
	Bad    string // the frame did not parse as a Payload: what it was
}

// streamKey names a stream of frames: a phone's frames to its binary (Up,
// Binary 0) or one binary's frames to one phone.
type streamKey struct {
	Up     bool
	Phone  int
	Binary int
}

func (k streamKey) String() string {
	if k.Up {
		return fmt.Sprintf("phone %d -> binary", k.Phone)
	}
	return fmt.Sprintf("binary %d -> phone %d", k.Binary, k.Phone)
}

// Sent is one frame a client sent.
type Sent struct {
	Seq       int
	At        T
	Size      int
	Directive int // a close directive's code (down only)
}

// Notice is a close notice a binary received.
type Notice struct {
	Binary int
	ConnID string
	Code   int
	Recv   T
}

// FaultKind is a kind of fault the schedule injects.
type FaultKind string

// Fault kinds.
const (
	FaultKill      FaultKind = "kill"      // kill -9 of a relay, restarted at End
	FaultStop      FaultKind = "stop"      // SIGSTOP of a relay, SIGCONT at End
	FaultNATSKill  FaultKind = "nats-kill" // a NATS node shut down, restarted at End
	FaultCut       FaultKind = "cut"       // a relay's NATS links cut (resets), healed at End
	FaultBlackhole FaultKind = "blackhole" // a relay's NATS links held silently, healed at End
	FaultStall     FaultKind = "stall"     // a binary stops reading while its remote phones burst
	FaultSlowPhone FaultKind = "slow-phone"
	FaultRogue     FaultKind = "rogue" // forged link messages from a NATS client
)

// AllFaults is every fault kind, in the order the docs list them.
var AllFaults = []FaultKind{FaultKill, FaultStop, FaultNATSKill, FaultCut, FaultBlackhole, FaultStall, FaultSlowPhone, FaultRogue}

// Fault is one injected fault. Target is an instance (kill, stop, cut,
// blackhole), a NATS node (nats-kill), a binary (stall) or a phone
// (slow-phone) id; End is when it was undone (restart, SIGCONT, heal).
type Fault struct {
	Kind   FaultKind
	Target int
	Start  T
	End    T
	Note   string
	// Affected: for nats-kill, the instances that were connected through
	// the node (their connection dropped and moved to another node).
	Affected []int `json:",omitempty"`
}

func (f Fault) String() string {
	return fmt.Sprintf("%s(%d) %v..%v %s", f.Kind, f.Target, f.Start.Round(time.Millisecond), f.End.Round(time.Millisecond), f.Note)
}

// Interval is [From, To].
type Interval struct{ From, To T }

func (iv Interval) overlaps(a, b T) bool { return iv.From <= b && a <= iv.To }

// History is everything a run recorded. Safe for concurrent recording;
// the checker reads it after the run.
type History struct {
	mu      sync.Mutex
	Conns   map[int]*Conn
	Sent    map[streamKey][]Sent
	Deliv   []Delivery
	Notices []Notice
	Faults  []Fault
	// Offline[i] are the times instance i had no NATS connection through
	// any of its links (sampled), or was not running.
	Offline [][]Interval
	// Starved[i] are the times instance i took over a second to answer
	// /livez though no fault stopped it: the machine did not run it (a
	// loaded 2-core box). Paused are the times the harness itself did not
	// run (its timestamps are late by that much). The checker treats both
	// as it treats a SIGSTOP.
	Starved [][]Interval
	Paused  []Interval
	// Quiesce is when traffic stopped: nothing was sent after it.
	Quiesce T
	// End is when the clients were all closed and the history taken.
	End T
	// Gauges are each instance's gauges after quiescence, and the error
	// that kept one from reaching zero.
	Gauges map[int]map[string]float64
	// GaugeErrs are gauges that did not settle at zero.
	GaugeErrs []string
	nextID    int
}

// NewHistory returns an empty history for n instances.
func NewHistory(n int) *History {
	return &History{Conns: map[int]*Conn{}, Sent: map[streamKey][]Sent{}, Offline: make([][]Interval, n), Starved: make([][]Interval, n),
		Gauges: map[int]map[string]float64{}}
}

// newConn registers a connection and returns it; its fields are then
// written under h's lock (h.update).
func (h *History) newConn(role Role, tenant string, inst int, at T) *Conn {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	c := &Conn{ID: h.nextID, Role: role, Tenant: tenant, Inst: inst, Dial: at}
	h.Conns[c.ID] = c
	return c
}

// update runs f under h's lock.
func (h *History) update(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f()
}

func (h *History) sent(k streamKey, s Sent) {
	h.mu.Lock()
	h.Sent[k] = append(h.Sent[k], s)
	h.mu.Unlock()
}

func (h *History) delivered(d Delivery) {
	h.mu.Lock()
	h.Deliv = append(h.Deliv, d)
	h.mu.Unlock()
}

func (h *History) notice(n Notice) {
	h.mu.Lock()
	h.Notices = append(h.Notices, n)
	h.mu.Unlock()
}

// fault records f and returns its index, for ended.
func (h *History) fault(f Fault) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Faults = append(h.Faults, f)
	return len(h.Faults) - 1
}

func (h *History) faultEnded(i int, at T, note string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Faults[i].End = at
	if note != "" {
		h.Faults[i].Note += " " + note
	}
}

// sorted returns the deliveries in receive order.
func (h *History) sorted() []Delivery {
	d := append([]Delivery(nil), h.Deliv...)
	sort.SliceStable(d, func(i, j int) bool { return d[i].Recv < d[j].Recv })
	return d
}

// Stats are a run's counts, for the report and the docs.
type Stats struct {
	Binaries, Phones, Squatters int
	FramesSent, FramesDelivered int
	Notices                     int
	Faults                      map[FaultKind]int
}

// Stats counts what h holds.
func (h *History) Stats() Stats {
	s := Stats{Faults: map[FaultKind]int{}}
	for _, c := range h.Conns {
		if c.Role == Binary {
			s.Binaries++
			if c.Squatter {
				s.Squatters++
			}
		} else {
			s.Phones++
		}
	}
	for _, ss := range h.Sent {
		s.FramesSent += len(ss)
	}
	s.FramesDelivered = len(h.Deliv)
	s.Notices = len(h.Notices)
	for _, f := range h.Faults {
		s.Faults[f.Kind]++
	}
	return s
}

// historyFile is History's JSON form (its maps keyed by strings).
type historyFile struct {
	Conns     []*Conn
	Sent      []sentStream
	Deliv     []Delivery
	Notices   []Notice
	Faults    []Fault
	Offline   [][]Interval
	Starved   [][]Interval
	Paused    []Interval
	Quiesce   T
	End       T
	Gauges    map[int]map[string]float64
	GaugeErrs []string
}

type sentStream struct {
	Key  streamKey
	Sent []Sent
}

// MarshalJSON writes the history so that a failed run's checker can be
// rerun and studied offline (ReadHistory).
func (h *History) MarshalJSON() ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := historyFile{Deliv: h.Deliv, Notices: h.Notices, Faults: h.Faults, Offline: h.Offline, Starved: h.Starved, Paused: h.Paused, Quiesce: h.Quiesce, End: h.End,
		Gauges: h.Gauges, GaugeErrs: h.GaugeErrs}
	for _, c := range h.Conns {
		f.Conns = append(f.Conns, c)
	}
	sort.Slice(f.Conns, func(i, j int) bool { return f.Conns[i].ID < f.Conns[j].ID })
	for k, s := range h.Sent {
		f.Sent = append(f.Sent, sentStream{k, s})
	}
	return json.Marshal(f)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (h *History) UnmarshalJSON(b []byte) error {
	var f historyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*h = History{Conns: map[int]*Conn{}, Sent: map[streamKey][]Sent{}, Deliv: f.Deliv, Notices: f.Notices, Faults: f.Faults,
		Offline: f.Offline, Starved: f.Starved, Paused: f.Paused, Quiesce: f.Quiesce, End: f.End, Gauges: f.Gauges, GaugeErrs: f.GaugeErrs}
	for _, c := range f.Conns {
		h.Conns[c.ID] = c
	}
	for _, s := range f.Sent {
		h.Sent[s.Key] = s.Sent
	}
	return nil
}

// Timeline describes connection id: its record, the frames of its
// streams (first and last delivered, count), and its close notices; for
// studying a saved run.
func (h *History) Timeline(id int) string {
	c := h.Conns[id]
	if c == nil {
		return fmt.Sprintf("no connection %d", id)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%+v\n", *c)
	for k, ss := range h.Sent {
		if k.Phone != id && k.Binary != id {
			continue
		}
		var got []Delivery
		for _, d := range h.Deliv {
			if d.Up == k.Up && d.P.Phone == k.Phone && (k.Up || d.P.Binary == k.Binary) && !d.P.Forged {
				got = append(got, d)
			}
		}
		fmt.Fprintf(&b, "%s: sent %d (%v..%v), delivered %d", k, len(ss), ss[0].At, ss[len(ss)-1].At, len(got))
		if len(got) > 0 {
			l := got[len(got)-1]
			fmt.Fprintf(&b, ", last seq %d sent %v received %v by %d (conn_id %s)", l.P.Seq, T(l.P.Sent), l.Recv, l.To, l.ConnID)
		}
		b.WriteString("\n")
	}
	for _, n := range h.Notices {
		if n.Binary == id {
			fmt.Fprintf(&b, "notice %+v\n", n)
		}
	}
	return b.String()
}
