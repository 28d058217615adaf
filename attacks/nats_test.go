package attacks

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	secureNATS.mu.Lock()
	defer secureNATS.mu.Unlock()
	for _, srv := range secureNATS.srvs {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
	for _, d := range secureNATS.dirs {
		os.RemoveAll(d)
	}
}

// secureNATS are the operator-mode NATS servers of Local.SecureNATS. The
// accounts and per-instance credentials come from the relay-nats-auth
// command built from this checkout (what an operator runs,
// docs/cluster.md "Permissions"), as a process: the suite stays black-box.
var secureNATS struct {
	buildOnce sync.Once
	bin       string
	buildErr  error

	mu   sync.Mutex
	srvs []*server.Server
	dirs []string
}

// startSecureNATS issues credentials for ids in cluster name and starts a
// NATS server of their own that trusts only them (loopback, JetStream on).
func startSecureNATS(name string, ids []string) (string, map[string]string, error) {
	secureNATS.buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relay-nats-auth-")
		if err != nil {
			secureNATS.buildErr = err
			return
		}
		secureNATS.mu.Lock()
		secureNATS.dirs = append(secureNATS.dirs, dir)
		secureNATS.mu.Unlock()
		secureNATS.bin = filepath.Join(dir, "relay-nats-auth")
		cmd := exec.Command("go", "build", "-o", secureNATS.bin, "./cmd/relay-nats-auth")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			secureNATS.buildErr = fmt.Errorf("go build ./cmd/relay-nats-auth: %v\n%s", err, out)
		}
	})
	if secureNATS.buildErr != nil {
		return "", nil, secureNATS.buildErr
	}
	dir, err := os.MkdirTemp("", "relay-attacks-secure-nats-")
	if err != nil {
		return "", nil, err
	}
	secureNATS.mu.Lock()
	secureNATS.dirs = append(secureNATS.dirs, dir)
	secureNATS.mu.Unlock()
	auth := filepath.Join(dir, "auth")
	out, err := exec.Command(secureNATS.bin, "--dir", auth, "--cluster-name", name, "--instances", strings.Join(ids, ",")).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("relay-nats-auth: %v\n%s", err, out)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(auth, "nats-auth.conf"))
	if err != nil {
		return "", nil, err
	}
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, filepath.Join(dir, "js"), true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		return "", nil, err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return "", nil, fmt.Errorf("operator-mode NATS not ready")
	}
	secureNATS.mu.Lock()
	secureNATS.srvs = append(secureNATS.srvs, srv)
	secureNATS.mu.Unlock()
	creds := map[string]string{}
	for _, id := range ids {
		creds[id] = filepath.Join(auth, id+".creds")
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port), creds, nil
}
