// Command relay-cluster runs a local cluster for trying cluster mode
// (docs/cluster.md): an embedded NATS server with JetStream and three relay
// processes, all on 127.0.0.1. `make cluster` runs it; Ctrl-C stops it all.
//
//	relay-cluster --relay bin/relay [--base-port 8081] [--n 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/pyrycode/relay/internal/cluster/natstest"
)

func main() {
	bin := flag.String("relay", "bin/relay", "relay binary")
	base := flag.Int("base-port", 8081, "first relay's port on 127.0.0.1 (the others follow)")
	n := flag.Int("n", 3, "relays")
	flag.Parse()
	if err := run(*bin, *base, *n); err != nil {
		fmt.Fprintln(os.Stderr, "relay-cluster:", err)
		os.Exit(1)
	}
}

func run(bin string, base, n int) error {
	dir, err := os.MkdirTemp("", "relay-cluster-nats-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ns, err := natstest.Start(dir, 0)
	if err != nil {
		return err
	}
	defer ns.Stop()
	fmt.Printf("NATS (JetStream) on %s\n", ns.URL())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	for i := 0; i < n; i++ {
		addr := "127.0.0.1:" + strconv.Itoa(base+i)
		id := fmt.Sprintf("relay-%c", 'a'+i)
		cmd := exec.Command(bin, "serve", "--insecure-listen", addr,
			"--cluster-nats", ns.URL(), "--instance-id", id, "--log-level", "info")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		procs = append(procs, cmd)
		fmt.Printf("%s: binaries dial ws://%s/v1/server, phones ws://%s/v1/client\n", id, addr, addr)
	}
	fmt.Println("a phone on any relay reaches its binary on any other; Ctrl-C stops everything")
	<-ctx.Done()
	time.Sleep(100 * time.Millisecond)
	return nil
}
