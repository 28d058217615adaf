package cluster

import (
	"encoding/binary"
	"errors"

	"github.com/pyrycode/relay/internal/relay"
)

// Wire layouts of the cross-instance messages. All integers are unsigned
// varints (encoding/binary's Uvarint); a string is its length as a varint
// followed by its bytes; the frame, last, runs to the end of the message.
// Every message starts with a version byte (wireVersion): an instance
// refuses a version it does not know instead of misreading it, so a mixed
// fleet during an upgrade fails loudly (counted, phones closed 1011).
//
// Link message, <name>.i.<to>.m.<from> (relay.LinkMessage):
//
//	version(1) kind(1) flags(1) seq code str(server_id) str(conn_id) str(token) frame...
//
//	kind: 1 up (phone frame, home -> owner), 2 down (envelope for a phone,
//	owner -> home; code != 0 is a close directive), 3 leave (phone gone,
//	home -> owner), 4 evict (owner -> home: close with code).
//	flags: bit 0 notify (leave: the binary gets a close notice); bit 1
//	backlog (evict: the phone's queue on the owner was full). Unknown bits
//	are ignored.
//	seq: per phone and direction, from 1 (up and down only; 0 otherwise).
//	token: only on a phone's first up, only with --forward-v1-token.
//
// Join request, <name>.i.<owner>.join.<home>:   version(1) str(server_id)
// Join reply:                                   version(1) code epoch str(conn_id)
//
//	code 0 admitted, 4404 no binary, 4429 too many phones.
//
// Probe request, <name>.i.<owner>.probe.<from>: version(1) str(server_id)
// Probe reply:                                  version(1) result(1)
//
//	result: 0 absent, 1 live, 2 dead (relay.ProbeResult).
//
// Ping request, <name>.i.<peer>.ping.<from>:    version(1)
// Ping reply:                                   version(1) count str(conn_id)...
//
//	the conn_ids of the phones the peer shares with the asker.
//
// Owner broadcast, <name>.owner.<from>:         version(1) epoch str(server_id)
//
// Every layout but the link message (whose frame runs to the end) must end
// where its last field does: trailing bytes are refused, so a message has
// one reading. Nothing is allocated beyond what the message's own bytes
// hold (a count is checked against the bytes left before a slice is made);
// FuzzDecode* (wire_fuzz_test.go) hold both.
const wireVersion = 1

// ErrWire: a cross-instance message that does not parse. It is counted and
// dropped; the sequence numbers of the phones it concerned then show a gap.
var ErrWire = errors.New("cluster: malformed message")

const (
	flagNotify  = 1
	flagBacklog = 2
)

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// reader decodes a message; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func newReader(b []byte) *reader {
	r := &reader{b: b}
	if r.byte() != wireVersion {
		r.err = ErrWire
	}
	return r
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) < 1 {
		r.err = ErrWire
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = ErrWire
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) str() string { return r.strIn(nil) }

// strIn is str through an interner (nil: a new string each time).
func (r *reader) strIn(in *interner) string {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = ErrWire
		return ""
	}
	s := in.str(r.b[:n])
	r.b = r.b[n:]
	return s
}

// interner hands out one string per distinct byte sequence: the link
// subscription decodes the same few server-ids and conn_ids in every
// frame, and a string allocated per frame is garbage per frame. Bounded:
// past maxInterned entries it starts over. Not safe for concurrent use.
type interner struct{ m map[string]string }

// maxInterned bounds an interner: at most this many strings of at most
// maxInternedLen bytes (about 1 MiB with the map). A longer string (no
// valid server-id or conn_id is: a rogue instance's) is never kept.
const (
	maxInterned    = 4096
	maxInternedLen = relay.MaxServerIDBytes
)

func (in *interner) str(b []byte) string {
	if in == nil || len(b) > maxInternedLen {
		return string(b)
	}
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s
	}
	if in.m == nil || len(in.m) >= maxInterned {
		in.m = make(map[string]string)
	}
	s := string(b)
	in.m[s] = s
	return s
}

// encodeLink appends m's wire form to dst.
func encodeLink(dst []byte, m relay.LinkMessage) []byte {
	var flags byte
	if m.Notify {
		flags |= flagNotify
	}
	if m.Backlog {
		flags |= flagBacklog
	}
	dst = append(dst, wireVersion, byte(m.Kind), flags)
	dst = binary.AppendUvarint(dst, m.Seq)
	dst = binary.AppendUvarint(dst, uint64(m.Code))
	dst = appendStr(dst, m.ServerID)
	dst = appendStr(dst, m.ConnID)
	dst = appendStr(dst, m.Token)
	return append(dst, m.Frame...)
}

// decodeLink parses a link message, its server-id and conn_id through in
// (nil: fresh strings). The frame aliases b, so b must be the caller's to
// give away: nats.go delivers each message in a buffer of its own that it
// never reuses, and the relay copies a frame before keeping it (Receive
// queues an envelope or a pooled copy), so no copy is needed here.
func decodeLink(b []byte, in *interner) (relay.LinkMessage, error) {
	r := newReader(b)
	var m relay.LinkMessage
	m.Kind = relay.LinkKind(r.byte())
	flags := r.byte()
	m.Notify = flags&flagNotify != 0
	m.Backlog = flags&flagBacklog != 0
	m.Seq = r.uvarint()
	code := r.uvarint()
	m.ServerID = r.strIn(in)
	m.ConnID = r.strIn(in)
	m.Token = r.str()
	if r.err != nil || m.Kind < relay.LinkUp || m.Kind > relay.LinkEvict || code > 4999 {
		return relay.LinkMessage{}, ErrWire
	}
	m.Code = int(code)
	if len(r.b) > 0 {
		m.Frame = r.b
	}
	return m, nil
}

func encodeServerID(serverID string) []byte {
	return appendStr([]byte{wireVersion}, serverID)
}

func decodeServerID(b []byte) (string, error) {
	r := newReader(b)
	s := r.str()
	if r.err != nil || len(r.b) != 0 {
		return "", ErrWire
	}
	return s, nil
}

type joinReply struct {
	code   int
	epoch  uint64
	connID string
}

func encodeJoinReply(j joinReply) []byte {
	b := []byte{wireVersion}
	b = binary.AppendUvarint(b, uint64(j.code))
	b = binary.AppendUvarint(b, j.epoch)
	return appendStr(b, j.connID)
}

func decodeJoinReply(b []byte) (joinReply, error) {
	r := newReader(b)
	code := r.uvarint()
	j := joinReply{epoch: r.uvarint(), connID: r.str()}
	if r.err != nil || len(r.b) != 0 || code > 4999 || (code == 0) == (j.connID == "") {
		return joinReply{}, ErrWire
	}
	j.code = int(code)
	return j, nil
}

func encodeConnIDs(ids []string) []byte {
	b := []byte{wireVersion}
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = appendStr(b, id)
	}
	return b
}

func decodeConnIDs(b []byte) ([]string, error) {
	r := newReader(b)
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		return nil, ErrWire
	}
	ids := make([]string, 0, n)
	for i := uint64(0); i < n; i++ {
		ids = append(ids, r.str())
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, ErrWire
	}
	return ids, nil
}

type ownerMsg struct {
	epoch    uint64
	serverID string
}

func encodeOwner(o ownerMsg) []byte {
	b := binary.AppendUvarint([]byte{wireVersion}, o.epoch)
	return appendStr(b, o.serverID)
}

func decodeOwner(b []byte) (ownerMsg, error) {
	r := newReader(b)
	o := ownerMsg{epoch: r.uvarint(), serverID: r.str()}
	if r.err != nil || len(r.b) != 0 {
		return ownerMsg{}, ErrWire
	}
	return o, nil
}

func encodeProbeReply(res relay.ProbeResult) []byte {
	return []byte{wireVersion, byte(res)}
}

func decodeProbeReply(b []byte) (relay.ProbeResult, error) {
	r := newReader(b)
	res := relay.ProbeResult(r.byte())
	if r.err != nil || len(r.b) != 0 || res > relay.ProbeDead {
		return 0, ErrWire
	}
	return res, nil
}
