// Command relay-nats-auth issues the NATS credentials of a relay cluster
// (docs/cluster.md, "Permissions"): an operator, a system account and the
// relays' account (JetStream on) as nats-server configuration, and one
// .creds file per instance whose user may publish only subjects ending in
// its own id, read only its own inbox and replies, and use JetStream only
// for its cluster's claims bucket.
//
//	relay-nats-auth --dir /etc/relay/nats-auth --cluster-name relay --instances relay-a,relay-b,relay-c
//
// It writes DIR/nats-auth.conf (include it from every nats-server's
// configuration, deploy/nats-cluster.conf) and DIR/<id>.creds (copy each to
// its instance only, for --cluster-nats-creds), all 0600, refusing to
// overwrite. The operator and account keys are not kept: to add an
// instance, issue the whole set again and roll it out.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/pyrycode/relay/internal/cluster/natsauth"
)

func main() {
	dir := flag.String("dir", "", "output directory (created 0700)")
	name := flag.String("cluster-name", "relay", "the relays' --cluster-name")
	ids := flag.String("instances", "", "comma-separated instance ids (the relays' --instance-id)")
	operator := flag.String("operator", "relay", "the operator's name")
	flag.Parse()
	if *dir == "" || *ids == "" {
		fmt.Fprintln(os.Stderr, "usage: relay-nats-auth --dir DIR --instances ID[,ID...] [--cluster-name NAME]")
		os.Exit(2)
	}
	is, err := natsauth.New(*operator)
	if err == nil {
		err = is.WriteFiles(*dir, *name, strings.Split(*ids, ","))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay-nats-auth:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s/nats-auth.conf and %d .creds files\n", *dir, len(strings.Split(*ids, ",")))
}
