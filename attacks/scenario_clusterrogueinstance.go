package attacks

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// A rogue instance: a NATS client holding instance a's credentials (a
// stolen .creds file, or a compromised instance a) attacks tenant T, whose
// binary is on instance b and whose phone is on instance c, knowing the
// phone's conn_id (the worst case). The cluster runs on a NATS of its own
// in operator mode, every relay with the credentials relay-nats-auth
// issued for it (docs/cluster.md, Permissions).
//
//  1. Speaking as b or c (publishing on subjects whose sender token is
//     theirs): a binary envelope for the phone on c's inbox as b, a phone
//     frame for the binary on b's inbox as c. NATS must refuse both.
//  2. Speaking as itself with a payload that names T's server-id and the
//     phone's conn_id: a phone frame and a leave to b (claiming to carry
//     the phone c holds), a binary envelope to c (claiming to come from
//     the phone's owner). The instances must attribute each message to
//     its subject's sender: b takes a phone's messages only from the
//     phone's home (c), c takes a phone's envelopes only from the owner
//     the phone joined through (b). b answers the forged phone frame with
//     an eviction addressed to a, which the rogue sees: the forgery was
//     well-formed and refused on attribution, not on parsing.
//
// Every forgery carries the sequence number the real next message has, so
// one that got through would be delivered, not dropped as a gap. Then the
// real pair exchanges a frame each way: each side's next message must be
// the real one, and the phone must still be open.
func clusterRogueInstance() Scenario {
	return Scenario{
		ID:        "ATK-CLUSTER-ROGUE-INSTANCE",
		Title:     "A client with one instance's NATS credentials can neither speak as another instance nor pass a forged phone or binary message off as its owner's",
		Threats:   []string{"TM-CLU-4"},
		Mode:      LocalOnly,
		LocalOnly: "it publishes on NATS as a rogue instance: that needs the deployment's NATS credentials, which no client has",
		Run:       runClusterRogueInstance,
	}
}

// Link message kinds of the cluster wire (internal/cluster/wire.go).
const (
	linkUp    = 1
	linkDown  = 2
	linkLeave = 3
	linkEvict = 4
)

// ForgeLink encodes a link message as docs/cluster.md and
// internal/cluster/wire.go lay it out: version(1) kind(1) flags(1) seq code
// str(server_id) str(conn_id) str(token) frame..., varints, strings
// length-prefixed. An independent encoder: the suite imports nothing of
// the relay's (the cluster chaos harness forges with it too).
func ForgeLink(kind byte, flags byte, seq, code uint64, serverID, connID string, frame []byte) []byte {
	b := []byte{1, kind, flags}
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendUvarint(b, code)
	for _, s := range []string{serverID, connID, ""} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, frame...)
}

// decodeLinkHead reads kind, server_id and conn_id of a link message.
func decodeLinkHead(b []byte) (kind byte, serverID, connID string, ok bool) {
	if len(b) < 3 || b[0] != 1 {
		return 0, "", "", false
	}
	kind, b = b[1], b[3:]
	for i := 0; i < 2; i++ { // seq, code
		_, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, "", "", false
		}
		b = b[n:]
	}
	var strs [2]string
	for i := range strs {
		l, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < l {
			return 0, "", "", false
		}
		strs[i], b = string(b[n:n+int(l)]), b[n+int(l):]
	}
	return kind, strs[0], strs[1], true
}

func runClusterRogueInstance(ctx context.Context, t *Target) Result {
	st, skip := newSecureClusterStage(ctx, t, 3)
	if skip != nil {
		return *skip
	}
	defer st.Close()
	name := st.name
	a, b, c := clusterID(name, 0), clusterID(name, 1), clusterID(name, 2)
	sid := newServerID()
	bin, binR, code, err := st.binary(ctx, 1, sid)
	if err != nil || code != 0 {
		return Failf("tenant's binary on instance b: err %v, close %d", err, code)
	}
	phone, phoneR, connID, err := st.phone(ctx, 2, sid, binR)
	if err != nil {
		return Failf("tenant's phone on instance c: %v", err)
	}

	var mu sync.Mutex
	var violations []string
	rogue, err := nats.Connect(st.natsURL, nats.UserCredentials(st.creds[a]), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			violations = append(violations, err.Error())
			mu.Unlock()
		}))
	if err != nil {
		return Failf("rogue client with instance a's credentials: %v", err)
	}
	defer rogue.Close()
	evicts := make(chan string, 16)
	if _, err := rogue.Subscribe(name+".i."+a+".m.*", func(m *nats.Msg) {
		if k, s, id, ok := decodeLinkHead(m.Data); ok && k == linkEvict && s == sid && id == connID {
			evicts <- m.Subject
		}
	}); err != nil {
		return Failf("rogue: subscribe to a's own link inbox: %v", err)
	}
	refusedCount := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, v := range violations {
			if strings.Contains(strings.ToLower(v), "permissions violation for publish") {
				n++
			}
		}
		return n
	}

	// 1. As b and as c: NATS must refuse both.
	t0 := time.Now()
	if err := errors.Join(
		rogue.Publish(name+".i."+c+".m."+b, ForgeLink(linkDown, 0, 1, 0, sid, connID, []byte(`{"forged":"down-as-b"}`))),
		rogue.Publish(name+".i."+b+".m."+c, ForgeLink(linkUp, 0, 2, 0, sid, connID, []byte(`{"forged":"up-as-c"}`))),
		rogue.Flush(),
	); err != nil {
		return Failf("rogue publish: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for refusedCount() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	asOthers := refusedCount()
	refusedIn := time.Since(t0)

	// 2. As itself, the payload naming the tenant's server-id and phone.
	if err := errors.Join(
		rogue.Publish(name+".i."+b+".m."+a, ForgeLink(linkUp, 0, 2, 0, sid, connID, []byte(`{"forged":"up-payload"}`))),
		rogue.Publish(name+".i."+c+".m."+a, ForgeLink(linkDown, 0, 1, 0, sid, connID, []byte(`{"forged":"down-payload"}`))),
		rogue.Publish(name+".i."+b+".m."+a, ForgeLink(linkLeave, 1, 0, 1000, sid, connID, nil)),
		rogue.Flush(),
	); err != nil {
		return Failf("rogue publish on its own subjects: %v", err)
	}
	t1 := time.Now()
	var evictSubj string
	select {
	case evictSubj = <-evicts:
	case <-time.After(5 * time.Second):
	}
	evictedIn := time.Since(t1)

	// The real pair, each way; the next message each side reads must be
	// the real one.
	if err := sendTo(ctx, bin, connID, map[string]string{"real": "down"}); err != nil {
		return Failf("binary: %v", err)
	}
	if m := phoneR.next(5 * time.Second); string(m) != `{"real":"down"}` {
		return Failf("the phone on c read %q (closed %d), want its binary's real frame: a forged envelope was delivered, or the phone was cut off", m, phoneR.closeCode(0))
	}
	if err := writeJSON(ctx, phone, map[string]string{"real": "up"}); err != nil {
		return Failf("phone: %v", err)
	}
	var seen []envelope
	e, ok := binR.waitEnvelope(5*time.Second, &seen, func(e envelope) bool { return e.ConnID == connID || e.CloseCode != 0 })
	if !ok || string(e.Frame) != `{"real":"up"}` {
		return Failf("the binary on b read %s from the phone's conn_id, want the phone's real frame: a forged phone frame or leave was accepted (seen %d envelopes)", e.Raw, len(seen))
	}
	if c := phoneR.closeCode(0); c != 0 {
		return Failf("the phone was closed %d", c)
	}
	if asOthers < 2 {
		return Failf("NATS refused %d of the 2 publishes as other instances (want 2): instance a's credentials can speak as another instance", asOthers)
	}
	if evictSubj != name+".i."+a+".m."+b {
		return Failf("no eviction from b answered the forged phone frame (got %q): the forgery was not even parsed, so this run proves nothing about attribution", evictSubj)
	}
	return Passf("with instance a's credentials: 2 publishes as b and c refused by NATS (reported in %v); a phone frame, a leave and a binary envelope naming the tenant's phone on a's own subjects refused by b and c (b evicted the conn_id back to a in %v); the real pair b<->c then exchanged one frame each way, first in line, phone still open",
		refusedIn.Round(time.Millisecond), evictedIn.Round(time.Millisecond))
}
