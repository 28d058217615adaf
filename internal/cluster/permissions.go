package cluster

// Permissions is what one instance's NATS user needs and no more: NATS then
// vouches for the sender token of every subject (subjects.go), so an
// instance holding only its own credentials cannot speak as another
// (TM-CLU-4), cannot read another instance's inbox or request replies, and
// reaches JetStream only for its cluster's claims bucket (reading it
// through direct gets and its own ordered consumers). The user also
// needs to answer requests (join, probe, ping) on the requester's reply
// subject: NATS's "allow responses" (one reply per request), never a
// publish grant on other instances' inboxes.
//
// cmd/relay-nats-auth writes these lists into each instance's user JWT;
// docs/cluster.md ("Permissions") shows them for a nats-server config.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// InstancePermissions is the permission set of instance id in cluster name.
func InstancePermissions(name, id string) Permissions {
	stream := "KV_" + bucketName(name)
	return Permissions{
		Publish: []string{
			name + ".i.*.*." + id, // link, join, probe, ping: the last token is the sender
			name + ".owner." + id, // ownership broadcasts as itself
			"$KV." + bucketName(name) + ".>",
			"$JS.API.INFO", // account info: jetstream asks it before creating a bucket
			"$JS.API.STREAM.INFO." + stream,
			"$JS.API.STREAM.CREATE." + stream,
			"$JS.API.STREAM.UPDATE." + stream,
			"$JS.API.DIRECT.GET." + stream + ".>",
			// The watch of every session (session.go) and the sweep's read
			// of the bucket are ordered consumers of the claims stream:
			// created, deleted when reset, and answering flow control.
			"$JS.API.CONSUMER.CREATE." + stream,
			"$JS.API.CONSUMER.CREATE." + stream + ".>",
			"$JS.API.CONSUMER.DELETE." + stream + ".>",
			"$JS.FC." + stream + ".>",
		},
		Subscribe: []string{
			name + ".i." + id + ".>", // its own inbox only
			name + ".owner.*",
			inboxPrefix(name, id) + ".>",
		},
	}
}

// inboxPrefix is the instance's reply-subject prefix (nats.go's default,
// _INBOX, would need a subscribe grant on every instance's replies).
func inboxPrefix(name, id string) string { return "_INBOX." + name + "." + id }
