package relay

// DropReason says why the relay discarded one frame without closing the
// connection that sent it. It doubles as the "reason" label of the
// relay_frames_dropped_total metric, so it is a closed set: never build one
// from input.
type DropReason string

const (
	// DropMalformedEnvelope: a binary message that is not a valid envelope
	// (bad JSON, wrong field types, invalid close_code, non-object frame,
	// neither frame nor close_code, binary opcode).
	DropMalformedEnvelope DropReason = "malformed_envelope"
	// DropUnknownConnID: the envelope names a conn_id that is not a phone of
	// the sending binary's server-id (gone, never existed, or another tenant).
	DropUnknownConnID DropReason = "unknown_conn_id"
	// DropPhoneClosing: the addressed phone is already being closed.
	DropPhoneClosing DropReason = "phone_closing"
	// DropPhoneBacklog: the phone's own queue is full; the phone is closed 1011.
	DropPhoneBacklog DropReason = "phone_backlog_full"
	// DropRelayBacklog: the relay-wide queue ceiling is reached; the phone is
	// closed 1011.
	DropRelayBacklog DropReason = "relay_backlog_full"
	// DropPushUnconfigured: a push_wake request to a relay built without a
	// Waker (the relay binary always has one; its outcomes are counted in
	// relay_push_wakes_total).
	DropPushUnconfigured DropReason = "push_unconfigured"
	// DropNoBinary: a phone frame while its server-id has no live binary
	// (grace period) or the binary it joined under no longer holds the slot.
	DropNoBinary DropReason = "no_binary"
	// DropBinaryBusy: a phone frame that waited --write-timeout for its turn
	// to be written to a binary busy with other phones' frames. The phone
	// stays open; the binary is never closed for being slow but alive.
	DropBinaryBusy DropReason = "binary_busy"
)

// AllDropReasons lists every DropReason, so metrics can pre-register labels.
var AllDropReasons = []DropReason{
	DropMalformedEnvelope, DropUnknownConnID, DropPhoneClosing, DropPhoneBacklog,
	DropRelayBacklog, DropPushUnconfigured, DropNoBinary, DropBinaryBusy,
}
