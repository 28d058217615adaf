package relay

import (
	"context"
	"errors"
)

// Backplane joins several relays into one logical relay (cluster mode,
// implemented by internal/cluster over NATS). A Relay without one (the
// default) is single-instance and never calls it. With one, the local
// registry still routes every pair whose binary and phones share this
// instance; the backplane decides who owns a server-id cluster-wide and
// carries the frames of phones whose binary lives on another instance.
//
// Vocabulary: the owner is the instance whose registry holds a server-id's
// slot (its binary, or its grace period); a phone's home is the instance
// holding the phone's socket. A phone whose home is not its owner is
// represented twice: a proxy on its home (the real socket, its outbox and
// budget) and a stub in the owner's slot (so the owner enforces MaxPhones,
// routes its binary's envelopes and sends close notices).
type Backplane interface {
	// Acquire claims serverID cluster-wide for a new binary here, by a
	// revision-checked write to the claim store that gives the claim a new
	// epoch, also when this instance owns it already (a reclaim of its
	// grace slot, a takeover of its dead binary): a rival elsewhere that
	// read the claim before can then not take it too. The caller has
	// already refused the binary if a live one holds the slot here. When
	// another instance's live binary may hold it, Acquire asks that
	// instance (a wait of up to ProbeTimeout). ErrClusterUnavailable when
	// the claim store or the owner cannot be reached: the binary is
	// refused 1013 and retries.
	Acquire(ctx context.Context, serverID string) (ClaimOutcome, error)
	// SetGrace records that serverID's slot here entered (true) or left
	// (false) its grace period; the claim stays this instance's.
	SetGrace(serverID string, grace bool)
	// Release gives up serverID's claim: its slot here is gone.
	Release(serverID string)
	// Join asks serverID's owner elsewhere to admit a phone connecting here.
	// ErrClusterUnavailable when the claim store or owner cannot be reached.
	Join(ctx context.Context, serverID string) (JoinOutcome, error)
	// Send publishes one message to instance to. An error means the message
	// is lost: the caller closes the phone it concerned. m.Frame aliases
	// the caller's read buffer, reused after Send returns: an
	// implementation that keeps the frame must copy it.
	Send(to string, m LinkMessage) error
}

// ErrClusterUnavailable: the cluster's coordination (NATS) cannot be
// reached, or a server-id's owner did not answer. New claims and remote
// joins are refused with CodeTryAgain; pairs on one instance carry on.
var ErrClusterUnavailable = errors.New("relay: cluster unavailable")

// ErrOwnerUnreachable: the cluster is reachable, and the server-id's
// owner instance is alive as far as the cluster can tell (its session
// lives), but it did not answer. Claims and remote joins are refused with
// CodeTryAgain and the reason "owner unreachable"; the owner's session
// ends within the cluster's lease if it is gone.
var ErrOwnerUnreachable = errors.New("relay: owner unreachable")

// ClaimOutcome is the cluster's answer to Acquire.
type ClaimOutcome int

const (
	// ClaimGranted: this instance now owns the server-id under a new epoch
	// (a fresh claim, a reclaim of a grace slot, or a takeover from a
	// binary its owner found dead). The former owner has been told.
	ClaimGranted ClaimOutcome = iota + 1
	// ClaimConflict: a live binary holds it on another instance (4409).
	ClaimConflict
)

// JoinOutcome is a remote owner's answer to a phone joining here.
type JoinOutcome struct {
	Owner  string // instance that admitted the phone
	ConnID string // minted by the owner
	Epoch  uint64 // the owner's claim epoch the phone joined under
	// Code is 0 when admitted, else the close code for the phone
	// (CodeNoBinary, CodeTooManyPhones).
	Code int
}

// LinkKind is the type of a cross-instance message about one phone.
type LinkKind uint8

const (
	// LinkUp: a phone frame, home -> owner (Seq, Token on the first, Frame).
	LinkUp LinkKind = iota + 1
	// LinkDown: a binary envelope for a phone, owner -> home (Seq, Frame
	// and/or Code as a close directive).
	LinkDown
	// LinkLeave: the phone's connection ended on its home, home -> owner
	// (Code; Notify when the binary gets a close notice).
	LinkLeave
	// LinkEvict: the owner dropped the phone, owner -> home: close it with
	// Code (4404 eviction, 1011 lost frames or, with Backlog, its queue on
	// the owner full), no notice.
	LinkEvict
)

// LinkMessage is one cross-instance message about one phone. Its wire
// layout is internal/cluster's (wire.go).
type LinkMessage struct {
	Kind     LinkKind
	ServerID string
	ConnID   string
	Seq      uint64 // per phone and direction, from 1: a gap means loss
	Code     int
	Notify   bool
	// Backlog: an eviction because the phone's queue on its owner was full
	// (its cap or the relay-wide ceiling): the phone's close reason is
	// "backlog full", as on one relay.
	Backlog bool
	Token   string
	Frame   []byte
}

// ProbeResult is an owner's answer about its binary for a server-id.
type ProbeResult int

const (
	ProbeAbsent ProbeResult = iota // no slot here
	ProbeLive                      // a binary answered a ping within ProbeTimeout
	ProbeDead                      // no answer, or the slot is in grace
)

// LinkLoss says why cross-instance phones were closed 1011: frames could
// have been lost, so they are never dropped quietly. It is the reason label
// of relay_cluster_links_lost_total, a closed set.
type LinkLoss string

const (
	// LossDisconnect: this instance lost its NATS connection.
	LossDisconnect LinkLoss = "disconnect"
	// LossSlowConsumer: NATS dropped messages for this instance's
	// subscription.
	LossSlowConsumer LinkLoss = "slow_consumer"
	// LossPublish: publishing a message for the phone failed.
	LossPublish LinkLoss = "publish_error"
	// LossGap: a phone's message sequence skipped a number.
	LossGap LinkLoss = "gap"
	// LossQueue: the owner's queue towards its binary for a remote phone was
	// full (the binary is not reading).
	LossQueue LinkLoss = "queue_full"
	// LossPeer: the other instance stopped answering (crashed or cut off).
	LossPeer LinkLoss = "peer_lost"
)

// AllLinkLosses lists every LinkLoss, so metrics can pre-register labels.
var AllLinkLosses = []LinkLoss{LossDisconnect, LossSlowConsumer, LossPublish, LossGap, LossQueue, LossPeer}
