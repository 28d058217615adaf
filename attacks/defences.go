package attacks

// Defences maps each verified threat to its **Defence** line in
// docs/threat-model.md: the files and symbols of the code that enforces it.
// Kept in Go, like Threats, for `relay attack --report` on an operator's
// machine without the repository; TestThreatModel_DefenceNamesCode keeps
// it equal to the doc.
func Defences() map[string]string {
	return map[string]string{
		"TM-DOS-1":   "`internal/server/server.go` `Server.httpServer` (ReadHeaderTimeout, MaxHeaderBytes); `internal/admission/sockets.go` `limitListener.admit`",
		"TM-DOS-2":   "`internal/relay/conn.go` `msgReader.read` (the per-message deadline on both legs); `internal/relay/heartbeat.go` `heartbeats.ping`",
		"TM-DOS-3":   "`internal/relay/relay.go` `Relay.accept` (SetReadLimit before any read); `internal/relay/phone.go` `phoneConn.readLoop`",
		"TM-DOS-4":   "`internal/relay/outbox.go` `outbox.push`; `internal/relay/phone.go` `phoneConn.closeForBacklog`; `internal/relay/framebuf.go` `getFrameBuffer`; `internal/relay/remote.go` `Relay.queueUp`",
		"TM-DOS-5":   "`internal/admission/controller.go` `Controller.admit`; `internal/admission/sockets.go` `limitListener.admit`",
		"TM-DOS-6":   "`internal/admission/controller.go` `Controller.admit`; `internal/admission/table.go` `table.get`",
		"TM-DOS-7":   "`internal/admission/controller.go` `Controller.admit`; `internal/admission/controller.go` `retryAfterSeconds`",
		"TM-DOS-8":   "`internal/relay/outbox.go` `byteBudget.acquire`; `internal/relay/phone.go` `phoneConn.pushShedding`; `internal/relay/relay.go` `Relay.shedLargestBacklog`; `internal/relay/outbox.go` `outbox.shed`; `internal/relay/remote.go` `Relay.queueUp`",
		"TM-DOS-9":   "`internal/relay/binary.go` `binaryConn.readLoop` (one envelope to at most one phone); `internal/relay/phone.go` `phoneConn.readLoop`",
		"TM-DOS-10":  "`internal/relay/heartbeat.go` `heartbeats.ping`; `internal/relay/binary.go` `binaryConn.claim` (the conflict probe)",
		"TM-DOS-11":  "`internal/relay/binary.go` `binaryConn.write`; `internal/relay/progress.go` `progressConn.Write`; `internal/relay/progress.go` `progressConn.check`; `internal/relay/progress.go` `progressConn.mark`; `internal/relay/heartbeat.go` `heartbeats.ping`; `internal/relay/conn.go` `wsEnd.alive`; `internal/relay/remote.go` `Relay.Probe`",
		"TM-LOG-1":   "`internal/logging/handler.go` `filter.add` (key allowlist)",
		"TM-LOG-2":   "`internal/logging/sanitize.go` `Sanitize`; `internal/server/server.go` `httpErrorWriter.Write`",
		"TM-CERT-1":  "`internal/tlsconf/tls.go` `CheckCacheDir`",
		"TM-TLS-1":   "`internal/tlsconf/tls.go` `ServerTLSConfig` (MinVersion)",
		"TM-TLS-2":   "`internal/tlsconf/tls.go` `ServerTLSConfig` (CipherSuites)",
		"TM-LEAK-1":  "`internal/server/recover.go` `withRecovery`",
		"TM-LEAK-2":  "`internal/server/respond.go` `genericBodyWriter.WriteHeader`; `internal/relay/relay.go` `Relay.badRequest`; `internal/server/server.go` `canonicalOnly`",
		"TM-LEAK-3":  "`internal/server/health.go` `Server.healthz`; `internal/server/health.go` `Server.readyz`; `internal/server/server.go` `Server.metricsHandler`",
		"TM-ROUTE-1": "`internal/relay/registry.go` `registry.lookupPhone`",
		"TM-ROUTE-2": "`internal/relay/headers.go` `ParseBinaryHeaders`; `internal/relay/headers.go` `ParsePhoneHeaders`; `internal/relay/headers.go` `ValidServerID`; `internal/relay/claimgate.go` `claimGates.lock`",
		"TM-ROUTE-3": "`internal/relay/connid.go` `newConnID`",
		"TM-ROUTE-4": "`internal/relay/relay.go` `Relay.ServePhone` (the token is kept only with ForwardV1Token); `internal/relay/phone.go` `phoneConn.readLoop` (first envelope only)",
		"TM-ROUTE-5": "`internal/relay/jsonscan.go` `validJSONObject`; `internal/relay/jsonscan.go` `skipString`; `internal/relay/jsonscan.go` `skipValue`; `internal/relay/envelope.go` `scanBinaryEnvelope`",
		"TM-NET-1":   "`internal/admission/clientip.go` `resolveClientIP`; `internal/admission/proxy.go` `proxyPolicy`",
		"TM-HOST-1":  "`internal/server/tls.go` `hostGate.wrap`",
		"TM-OUT-1":   "`internal/push/sender.go` `Sender.admit` (per-server-id bucket); `internal/push/fcm.go` `wakeBody` (fixed body)",
		"TM-OUT-2":   "`internal/push/sender.go` `Sender.TryWake` (in-flight cap, drop not queue); `internal/relay/relay.go` `Relay.wake` (hand-off off the read loop)",
		"TM-OUT-3":   "`internal/push/sender.go` `Sender.send` (logs `Fingerprint` only); `internal/push/credentials.go` `loadCredentials` (fixed-word refusals)",
		"TM-OUT-4":   "`internal/push/sender.go` `Sender.post` (per-request timeout, Retry-After); `internal/push/tokens.go` `tokenCache.get`; `internal/push/tokens.go` `tokenTransport.RoundTrip` (the token fetch's bound)",
		"TM-OUT-5":   "`internal/push/credentials.go` `checkCredentialsInfo`; `internal/push/credentials.go` `checkOwner`; `internal/fileowner/fileowner_unix.go` `Foreign`; `internal/fileowner/chain.go` `Resolve`; `internal/fileowner/chain.go` `CheckLinked`",
		"TM-OUT-6":   "`internal/push/options.go` `checkURL`; `internal/push/credentials.go` `loadCredentials` (token_uri); `internal/push/sender.go` `refuseRedirect`",
		"TM-CLU-1":   "`internal/cluster/claims.go` `keyFor`; `internal/cluster/claims.go` `parseClaim` (the server-id check); `internal/relay/remote.go` `Relay.Receive`; `internal/relay/registry.go` `registry.lookupPhone`",
		"TM-CLU-2":   "`internal/cluster/session.go` `Cluster.judgeLocked`; `internal/cluster/session.go` `Cluster.revokeSession`; `internal/cluster/session.go` `Cluster.ownerState`; `internal/cluster/claims.go` `Cluster.Acquire` (1013 while the owner's session lives); `internal/cluster/sweep.go` `Cluster.sweep`",
		"TM-CLU-4":   "`internal/relay/remote.go` `Relay.Receive` (a stub's messages only from its home; a proxy's only from its owner); `internal/cluster/subjects.go` `sender`; `internal/cluster/permissions.go` `InstancePermissions`; `internal/cluster/identity.go` `Options.CheckCreds`, `duplicateAtStart`, `Cluster.dupLoop`; `internal/cluster/version.go` `serverVersionOK`",
		"TM-CLU-5":   "`internal/cluster/session.go` `Cluster.revokeSession`; `internal/cluster/session.go` `Cluster.sessionLost`; `internal/cluster/claims.go` `Cluster.reassert`; `internal/cluster/claims.go` `Cluster.lost`; `internal/relay/remote.go` `Relay.Superseded`; `internal/relay/remote.go` `binaryConn.clusterClaim`; `internal/cluster/claims.go` `Cluster.Acquire`; `internal/relay/remote.go` `Relay.Probe`; `internal/cluster/cluster.go` `Start` (NATS ping interval)",
	}
}
