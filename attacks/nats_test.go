package attacks

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// A real NATS server with JetStream, on loopback, shared by the cluster
// scenarios of this test binary (each uses its own --cluster-name). It is
// linked into the test only, never into the relay (TM-SUP-1).
var testNATS struct {
	once sync.Once
	url  string
	srv  *server.Server
	dir  string
}

func natsURL() string {
	testNATS.once.Do(func() {
		dir, err := os.MkdirTemp("", "relay-attacks-nats-")
		if err != nil {
			return
		}
		srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
		if err != nil {
			os.RemoveAll(dir)
			return
		}
		go srv.Start()
		if !srv.ReadyForConnections(10 * time.Second) {
			srv.Shutdown()
			os.RemoveAll(dir)
			return
		}
		testNATS.srv, testNATS.dir = srv, dir
		testNATS.url = fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)
	})
	return testNATS.url
}

func stopNATS() {
	if testNATS.srv != nil {
		testNATS.srv.Shutdown()
		testNATS.srv.WaitForShutdown()
		os.RemoveAll(testNATS.dir)
	}
}
