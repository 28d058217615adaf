package cluster

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// An instance's identity is its --instance-id: the sender token of every
// subject it publishes, the owner named in its claims. Two operator
// mistakes would make it someone else's, and both are refused at start:
//
//   - credentials issued for another instance (a copied .creds file): NATS
//     would refuse every publish as this id, and the only sign would be a
//     permissions error in the log. CheckCreds compares the user JWT's
//     permissions with the subjects this id needs, without connecting.
//   - a second live instance with the same id: both would read each other's
//     messages and write each other's claims. The preflight connection asks
//     <name>.i.<id>.ping.<id>; any answer is a live instance already
//     subscribed as this id.
//
// A duplicate that the start cannot see (NATS unreachable at start, two
// instances starting at once) is met later by dupLoop: each instance pings
// its own inbox every dupCheckEvery leases and counts the answers; its own
// is one, more is a duplicate, logged once per episode
// (cluster_duplicate_instance) and counted
// (relay_cluster_duplicate_instances_total).

// ErrCredsMismatch is returned by Start (exit 2) when the
// --cluster-nats-creds user may not publish or subscribe as --instance-id:
// credentials issued for another instance, or for another cluster name.
// The error names the user, the first subject it lacks and the id.
var ErrCredsMismatch = errors.New("cluster: the NATS credentials do not match --instance-id")

// ErrDuplicateInstance is returned by Start (exit 2) when another live
// instance of the cluster already answers as --instance-id.
var ErrDuplicateInstance = errors.New("cluster: another live instance uses this --instance-id")

// dupCheckEvery is how many leases pass between two duplicate checks
// after start.
const dupCheckEvery = 2

// CheckCreds reads the credentials file's user JWT (no connection) and
// reports ErrCredsMismatch when its permissions do not let this instance
// publish or subscribe as its own id. A user without permissions (the
// whole account) matches every id.
func (o Options) CheckCreds() error {
	if o.CredsFile == "" {
		return nil
	}
	b, err := os.ReadFile(o.CredsFile)
	if err != nil {
		return fmt.Errorf("%w: --cluster-nats-creds: %v", ErrInvalidOptions, err)
	}
	uc, err := userClaims(b)
	if err != nil {
		return fmt.Errorf("%w: --cluster-nats-creds holds no NATS user JWT", ErrInvalidOptions)
	}
	o = o.WithDefaults()
	s := subjects{o.Name, o.InstanceID}
	need := []struct {
		verb, subj string
		perm       permission
	}{
		{"publish", s.ownerOut(), uc.NATS.Pub},
		{"publish", s.to("any", kindLink), uc.NATS.Pub},
		{"subscribe to", s.inbox(kindLink), uc.NATS.Sub},
		{"subscribe to", s.ownerIn(), uc.NATS.Sub},
		{"subscribe to", inboxPrefix(o.Name, o.InstanceID) + ".>", uc.NATS.Sub},
	}
	for _, n := range need {
		if !permits(n.perm, n.subj) {
			return fmt.Errorf("%w: user %q may not %s %s, which instance %q needs (credentials issued for another instance or --cluster-name?)",
				ErrCredsMismatch, uc.Name, n.verb, n.subj, o.InstanceID)
		}
	}
	return nil
}

// permission is one direction of a NATS user JWT's permissions.
type permission struct {
	Allow []string `json:"allow"`
	Deny  []string `json:"deny"`
}

// userJWT is what CheckCreds reads of a user JWT's claims. The signature
// is not checked: NATS does that; this only compares the user with the id.
type userJWT struct {
	Name string `json:"name"`
	NATS struct {
		Pub permission `json:"pub"`
		Sub permission `json:"sub"`
	} `json:"nats"`
}

// userClaims decodes the user JWT of a .creds file (the line after its
// "BEGIN NATS USER JWT" marker).
func userClaims(creds []byte) (userJWT, error) {
	var u userJWT
	_, after, ok := bytes.Cut(creds, []byte("BEGIN NATS USER JWT"))
	if !ok {
		return u, ErrWire
	}
	lines := bytes.Fields(after)
	if len(lines) < 2 { // the marker's dashes, then the token
		return u, ErrWire
	}
	parts := bytes.Split(lines[1], []byte("."))
	if len(parts) != 3 {
		return u, ErrWire
	}
	payload, err := base64.RawURLEncoding.DecodeString(string(parts[1]))
	if err != nil {
		return u, err
	}
	return u, json.Unmarshal(payload, &u)
}

// permits reports whether p lets a client publish or subscribe to subj
// (which may hold wildcards): an allow list, when there is one, covers it,
// and no deny pattern overlaps it.
func permits(p permission, subj string) bool {
	s := strings.Split(subj, ".")
	ok := len(p.Allow) == 0
	for _, a := range p.Allow {
		if covers(strings.Split(a, "."), s) {
			ok = true
			break
		}
	}
	for _, d := range p.Deny {
		if overlap(strings.Split(d, "."), s) {
			return false
		}
	}
	return ok
}

// covers reports whether pattern p matches every subject s can name (NATS
// wildcards: * one token, > one or more).
func covers(p, s []string) bool {
	for i, t := range p {
		if t == ">" {
			return i < len(s)
		}
		if i >= len(s) || s[i] == ">" || (t != "*" && t != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// overlap reports whether some subject matches both patterns.
func overlap(a, b []string) bool {
	for i := 0; ; i++ {
		if i == len(a) || i == len(b) {
			return len(a) == len(b)
		}
		if a[i] == ">" || b[i] == ">" {
			return true
		}
		if a[i] != "*" && b[i] != "*" && a[i] != b[i] {
			return false
		}
	}
}

// duplicateAtStart asks whether a live instance already answers as this
// id, on the preflight connection (nothing of this instance subscribes
// yet).
func duplicateAtStart(nc *nats.Conn, s subjects) error {
	_, err := nc.Request(s.to(s.self, kindPing), []byte{wireVersion}, time.Second)
	if err == nil {
		return fmt.Errorf("%w: instance %q answered on %s; give every instance its own --instance-id (and credentials)",
			ErrDuplicateInstance, s.self, s.to(s.self, kindPing))
	}
	return nil // no responders, or none in time: nobody live as this id
}

// answersAsSelf counts the instances answering a ping on this instance's
// own inbox within wait: 1 is this instance, more are duplicates.
func (c *Cluster) answersAsSelf(wait time.Duration) (int, error) {
	inbox := c.nc.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest(c.sub.to(c.self, kindPing), inbox, []byte{wireVersion}); err != nil {
		return 0, err
	}
	n := 0
	deadline := time.Now().Add(wait)
	for {
		if _, err := sub.NextMsg(time.Until(deadline)); err != nil {
			return n, nil
		}
		n++
	}
}

// dupLoop checks for a duplicate of this instance every dupCheckEvery
// leases, logging once per episode.
func (c *Cluster) dupLoop() {
	defer c.loopsDone.Done()
	t := time.NewTicker(dupCheckEvery * c.opts.Lease)
	defer t.Stop()
	dup := false
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !c.nc.IsConnected() {
			continue
		}
		n, err := c.answersAsSelf(time.Second)
		switch {
		case err != nil || n == 0:
			// Our own answer is missing: this check says nothing.
		case n > 1 && !dup:
			dup = true
			c.m.duplicates.Inc()
			c.log.Error("another live instance uses this instance id: give every instance its own --instance-id", "event", "cluster_duplicate_instance",
				"instance_id", c.self, "count", n)
		case n == 1:
			dup = false
		}
	}
}
