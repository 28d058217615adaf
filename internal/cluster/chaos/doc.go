// Package chaos is the cluster's seeded fault harness and the checker of
// what it records (docs/cluster.md, "How it is tested under faults").
//
// Run starts a 3-node NATS cluster (natstest, routes on loopback, the
// claims replicated 3 times) and three REAL relay processes, each reaching
// every NATS node through its own attacks.CutLink, and drives them with
// seeded mixed traffic: tenants whose daemons claim, leave and reclaim on
// random instances (and now and then a second daemon for a held
// server-id), phones joining random instances, frames both ways, each
// carrying its tenant, its sender, a per-stream sequence number and its
// send time. Meanwhile a seeded schedule injects faults: kill -9 and
// restart of a relay, SIGSTOP/SIGCONT (shorter and longer than the lease),
// a NATS node killed and restarted, a relay's NATS links cut (resets) or
// blackholed (held, no reset), a binary that stops reading while its remote
// phones burst, a phone that stops reading, and a rogue NATS client forging
// link messages for live phones.
//
// Everything the clients see is recorded in a History, with the fault log.
// Check reads it afterwards and knows nothing of how the relays store
// claims: ownership is what clients observe (a binary accepted, refused
// 4409 or 1013, closed 1011 "replaced"; a phone refused or evicted 4404;
// frames a binary received or sent), checked for linearizability against
// a register per server-id with porcupine; frames are checked for
// duplicates, order, misrouting and gaps not bracketed by a documented
// close; close codes and close notices against docs/protocol.md and
// docs/cluster.md; and each instance's gauges must come back to zero once
// the clients are gone. The anomalies docs/cluster.md allows under faults
// are allowed only inside the windows the fault log opens (windows.go).
//
// The package is test-only: no relay binary links it.
package chaos
