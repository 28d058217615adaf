package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/pyrycode/relay/internal/relay"
)

// Fuzz targets for every decoder of another instance's messages (wire.go)
// and of claim values (claims.go parseClaim): under TM-CLU-4 a rogue
// instance, or anyone who can publish into the cluster, chooses their
// bytes. Each target checks the decoder against an independent reading of
// the layout documented in wire.go (bytes.Reader and binary.ReadUvarint,
// not the decoder's reader), that nothing decoded holds more bytes than
// the message did (no allocation beyond the input), and that what decodes
// encodes back to a message that decodes the same and is never longer
// (the encoders' form is the canonical one). Seeds: testdata/fuzz/<Name>;
// `go test` replays them, `make fuzz` explores.

// oracle reads a layout independently of wire.go's reader.
type oracle struct {
	r   *bytes.Reader
	bad bool
}

func newOracle(b []byte) *oracle {
	o := &oracle{r: bytes.NewReader(b)}
	if v, err := o.r.ReadByte(); err != nil || v != 1 {
		o.bad = true
	}
	return o
}

func (o *oracle) byte() byte {
	c, err := o.r.ReadByte()
	if err != nil {
		o.bad = true
	}
	return c
}

func (o *oracle) uvarint() uint64 {
	v, err := binary.ReadUvarint(o.r)
	if err != nil {
		o.bad = true
	}
	return v
}

func (o *oracle) str() string {
	n := o.uvarint()
	if o.bad || n > uint64(o.r.Len()) {
		o.bad = true
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(o.r, b); err != nil {
		o.bad = true
	}
	return string(b)
}

func (o *oracle) rest() []byte {
	b, _ := io.ReadAll(o.r)
	return b
}

// done reports a good reading that used every byte.
func (o *oracle) done() bool { return !o.bad && o.r.Len() == 0 }

func wantWireErr(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrWire) {
		t.Fatalf("refusal is not ErrWire: %v", err)
	}
}

func FuzzDecodeLink(f *testing.F) {
	f.Add(encodeLink(nil, relay.LinkMessage{Kind: relay.LinkUp, ServerID: "s", ConnID: "client-0123456789abcdef", Seq: 1, Token: "t", Frame: []byte(`{"a":1}`)}))
	f.Add(encodeLink(nil, relay.LinkMessage{Kind: relay.LinkEvict, ServerID: "s", ConnID: "c", Code: 1011, Backlog: true}))
	// One interner across inputs, as the link subscription keeps one.
	in := &interner{}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeLink(b, nil)
		mi, erri := decodeLink(b, in)
		if (err == nil) != (erri == nil) || !reflect.DeepEqual(m, mi) {
			t.Fatalf("through an interner: %+v, %v; fresh: %+v, %v", mi, erri, m, err)
		}
		if len(in.m) > maxInterned {
			t.Fatalf("the interner holds %d strings", len(in.m))
		}
		for k := range in.m { // so at most maxInterned x maxInternedLen bytes
			if len(k) > maxInternedLen {
				t.Fatalf("the interner keeps a %d-byte string", len(k))
			}
		}
		o := newOracle(b)
		kind := relay.LinkKind(o.byte())
		flags := o.byte()
		want := relay.LinkMessage{Kind: kind, Notify: flags&1 != 0, Backlog: flags&2 != 0, Seq: o.uvarint()}
		code := o.uvarint()
		want.ServerID, want.ConnID, want.Token = o.str(), o.str(), o.str()
		if frame := o.rest(); len(frame) > 0 {
			want.Frame = frame
		}
		ok := !o.bad && kind >= relay.LinkUp && kind <= relay.LinkEvict && code <= 4999
		if !ok {
			wantWireErr(t, err)
			return
		}
		if err != nil {
			t.Fatalf("refused a well-formed link message: %v", err)
		}
		want.Code = int(code)
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("decoded %+v, want %+v", m, want)
		}
		if len(m.ServerID)+len(m.ConnID)+len(m.Token)+len(m.Frame) > len(b) {
			t.Fatalf("decoded more bytes than the message holds")
		}
		if len(m.Frame) > 0 && &m.Frame[0] != &b[len(b)-len(m.Frame)] {
			t.Fatalf("the frame is a copy: decodeLink promises it aliases the message")
		}
		enc := encodeLink(nil, m)
		if len(enc) > len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(b))
		}
		if m2, err := decodeLink(enc, nil); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("round trip: %+v, %v; want %+v", m2, err, m)
		}
	})
}

func FuzzDecodeServerID(f *testing.F) {
	f.Add(encodeServerID("6f1c2a4e-0b7d-4c1e-9a55-2f3d4b5c6d7e"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeServerID(b)
		o := newOracle(b)
		want := o.str()
		if !o.done() {
			wantWireErr(t, err)
			return
		}
		if err != nil || s != want {
			t.Fatalf("decoded %q, %v; want %q", s, err, want)
		}
		enc := encodeServerID(s)
		if len(enc) > len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(b))
		}
		if s2, err := decodeServerID(enc); err != nil || s2 != s {
			t.Fatalf("round trip: %q, %v", s2, err)
		}
	})
}

func FuzzDecodeJoinReply(f *testing.F) {
	f.Add(encodeJoinReply(joinReply{epoch: 42, connID: "client-0123456789abcdef"}))
	f.Add(encodeJoinReply(joinReply{code: 4429}))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := decodeJoinReply(b)
		o := newOracle(b)
		code := o.uvarint()
		want := joinReply{epoch: o.uvarint(), connID: o.str()}
		if !o.done() || code > 4999 || (code == 0) == (want.connID == "") {
			wantWireErr(t, err)
			return
		}
		want.code = int(code)
		if err != nil || j != want {
			t.Fatalf("decoded %+v, %v; want %+v", j, err, want)
		}
		enc := encodeJoinReply(j)
		if len(enc) > len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(b))
		}
		if j2, err := decodeJoinReply(enc); err != nil || j2 != j {
			t.Fatalf("round trip: %+v, %v", j2, err)
		}
	})
}

func FuzzDecodeConnIDs(f *testing.F) {
	f.Add(encodeConnIDs(nil))
	f.Add(encodeConnIDs([]string{"client-0123456789abcdef", "client-fedcba9876543210"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := decodeConnIDs(b)
		o := newOracle(b)
		n := o.uvarint()
		var want []string
		for i := uint64(0); !o.bad && i < n; i++ {
			want = append(want, o.str())
		}
		if !o.done() {
			wantWireErr(t, err)
			return
		}
		if err != nil || len(ids) != len(want) || (len(want) > 0 && !reflect.DeepEqual(ids, want)) {
			t.Fatalf("decoded %q, %v; want %q", ids, err, want)
		}
		total := 0
		for _, id := range ids {
			total += len(id)
		}
		if cap(ids) > len(b) || total > len(b) {
			t.Fatalf("allocated beyond the message: cap %d, %d bytes of ids, from %d bytes", cap(ids), total, len(b))
		}
		enc := encodeConnIDs(ids)
		if len(enc) > len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(b))
		}
		if ids2, err := decodeConnIDs(enc); err != nil || len(ids2) != len(ids) || (len(ids) > 0 && !reflect.DeepEqual(ids2, ids)) {
			t.Fatalf("round trip: %q, %v", ids2, err)
		}
	})
}

func FuzzDecodeOwner(f *testing.F) {
	f.Add(encodeOwner(ownerMsg{epoch: 7, serverID: "6f1c2a4e-0b7d-4c1e-9a55-2f3d4b5c6d7e"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeOwner(b)
		o := newOracle(b)
		want := ownerMsg{epoch: o.uvarint(), serverID: o.str()}
		if !o.done() {
			wantWireErr(t, err)
			return
		}
		if err != nil || m != want {
			t.Fatalf("decoded %+v, %v; want %+v", m, err, want)
		}
		enc := encodeOwner(m)
		if len(enc) > len(b) {
			t.Fatalf("re-encoded %d bytes from %d", len(enc), len(b))
		}
		if m2, err := decodeOwner(enc); err != nil || m2 != m {
			t.Fatalf("round trip: %+v, %v", m2, err)
		}
	})
}

func FuzzDecodeProbeReply(f *testing.F) {
	for _, r := range []relay.ProbeResult{relay.ProbeAbsent, relay.ProbeLive, relay.ProbeDead} {
		f.Add(encodeProbeReply(r))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := decodeProbeReply(b)
		o := newOracle(b)
		want := relay.ProbeResult(o.byte())
		if !o.done() || want > relay.ProbeDead {
			wantWireErr(t, err)
			return
		}
		if err != nil || res != want {
			t.Fatalf("decoded %v, %v; want %v", res, err, want)
		}
		if !bytes.Equal(encodeProbeReply(res), b) {
			t.Fatalf("round trip: %x from %x", encodeProbeReply(res), b)
		}
	})
}

// FuzzParseClaim: a claim value in the store is believed only when it is
// this code's layout (version 2) for exactly that server-id, naming a valid
// instance and an incarnation;
// what is believed writes back to a value that reads the same.
func FuzzParseClaim(f *testing.F) {
	c := &Cluster{self: "relay-a"}
	f.Add(c.value("tenant~X", "0123456789abcdef", 0, false), "tenant~X")
	f.Add(c.value("tenant~X", "0123456789abcdef", 12, true), "tenant.X")
	f.Fuzz(func(t *testing.T, b []byte, serverID string) {
		v, err := parseClaim(b, serverID)
		if err != nil {
			wantWireErr(t, err)
			return
		}
		if v.V != claimVersion || v.ServerID != serverID || !ValidToken(v.Owner) || v.Inc == "" {
			t.Fatalf("believed %+v for %q", v, serverID)
		}
		if _, err := parseClaim(b, serverID+"x"); err == nil {
			t.Fatalf("a claim of %q was believed for another server-id", serverID)
		}
		w := &Cluster{self: v.Owner}
		if v2, err := parseClaim(w.value(v.ServerID, v.Inc, v.Epoch, v.Grace), serverID); err != nil || v2 != v {
			t.Fatalf("round trip: %+v, %v; want %+v", v2, err, v)
		}
	})
}
