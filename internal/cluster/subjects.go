package cluster

import "strings"

// Subjects (core NATS, never JetStream: frames are not persisted). Every
// subject starts with the cluster name, so two clusters can share one NATS
// account; every instance-to-instance subject ends with the SENDER's
// instance id, so NATS permissions can pin each instance's credentials to
// its own id (docs/cluster.md, "Permissions"):
//
//	<name>.i.<to>.m.<from>      link messages about one phone (wire.go), ordered
//	<name>.i.<to>.join.<from>   request: admit a phone of <from> into <to>'s slot
//	<name>.i.<to>.probe.<from>  request: is <to>'s binary for a server-id alive?
//	<name>.i.<to>.ping.<from>   request: which phones do we share? (liveness)
//	<name>.i.<to>.replaced.<from> request: <from> took a server-id <to> held;
//	                            answered once <to> dropped its slot
//	<name>.owner.<from>         broadcast: <from> now owns a server-id
//
// Instance ids and the cluster name are single subject tokens
// ([A-Za-z0-9_-], checked by ValidToken), so no id can add a token or a
// wildcard.

const (
	kindLink  = "m"
	kindJoin  = "join"
	kindProbe = "probe"
	kindPing  = "ping"
	// kindReplaced carries an ownership broadcast's payload to the one
	// instance whose slot the claim replaced, as a request: its answer
	// means the slot there is gone (Cluster.tellReplaced).
	kindReplaced = "replaced"
)

// subjects builds the cluster's subjects for one instance.
type subjects struct{ name, self string }

// to is a subject for a message from this instance to instance `to`.
func (s subjects) to(to, kind string) string {
	return s.name + ".i." + to + "." + kind + "." + s.self
}

// inbox is the wildcard this instance subscribes to for one kind.
func (s subjects) inbox(kind string) string {
	return s.name + ".i." + s.self + "." + kind + ".*"
}

// ownerOut and ownerIn are the ownership broadcast subjects.
func (s subjects) ownerOut() string { return s.name + ".owner." + s.self }
func (s subjects) ownerIn() string  { return s.name + ".owner.*" }

// sender is the last token of a subject: the sending instance's id.
func sender(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// ValidToken reports whether s can be a cluster name or instance id: 1-64
// characters of [A-Za-z0-9_-] (one subject token, one KV bucket name part).
func ValidToken(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
