package attacks

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/coder/websocket"
)

// clusterStage is a local cluster of relays in cluster mode (docs/cluster.md)
// against Local.NATSURL (or a NATS of its own: newSecureClusterStage), under a cluster name of its own so that scenarios
// sharing one NATS never see each other's claims.
type clusterStage struct {
	name string // --cluster-name
	// natsURL and creds (instance id -> .creds file): secure stages only.
	natsURL string
	creds   map[string]string
	relays  []*Target
	procs   []*Process
	conns   []*websocket.Conn
}

// clusterLease is the scenarios' --cluster-lease: short, so that a dead
// owner's slot frees in a couple of seconds.
const clusterLease = 1500 * time.Millisecond

func newClusterStage(ctx context.Context, t *Target, n int, flags ...string) (*clusterStage, *Result) {
	return newClusterStageVia(ctx, t, make([]string, n), flags...)
}

// newClusterStageVia is newClusterStage with len(urls) instances, instance
// i dialling NATS at urls[i] (a CutLink in front of the shared server, say),
// or at Local.NATSURL where urls[i] is "".
func newClusterStageVia(ctx context.Context, t *Target, urls []string, flags ...string) (*clusterStage, *Result) {
	l, skip := localOrSkip(t)
	if skip != nil {
		return nil, skip
	}
	if l.NATSURL == "" {
		r := Skipf("cluster scenarios need a NATS server (go test ./attacks starts one)")
		return nil, &r
	}
	name := "atk" + randHex(6)
	via := map[string]string{}
	for i, u := range urls {
		via[clusterID(name, i)] = u
	}
	return startClusterStage(ctx, l, name, func(id string) []string {
		if u := via[id]; u != "" {
			return []string{"--cluster-nats", u}
		}
		return []string{"--cluster-nats", l.NATSURL}
	}, len(urls), flags...)
}

// newSecureClusterStage is newClusterStage against a NATS of its own in
// operator mode (Local.SecureNATS): each relay connects with its own
// credentials, whose permissions docs/cluster.md gives. creds maps each
// instance id (clusterID) to its .creds file (st.creds).
func newSecureClusterStage(ctx context.Context, t *Target, n int, flags ...string) (*clusterStage, *Result) {
	l, skip := localOrSkip(t)
	if skip != nil {
		return nil, skip
	}
	if l.SecureNATS == nil {
		r := Skipf("this scenario needs an operator-mode NATS (go test ./attacks starts one)")
		return nil, &r
	}
	name := "atk" + randHex(6)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = clusterID(name, i)
	}
	url, creds, err := l.SecureNATS(name, ids)
	if err != nil {
		r := Failf("operator-mode NATS: %v", err)
		return nil, &r
	}
	st, res := startClusterStage(ctx, l, name, func(id string) []string {
		return []string{"--cluster-nats", url, "--cluster-nats-creds", creds[id]}
	}, n, flags...)
	if st != nil {
		st.natsURL, st.creds = url, creds
	}
	return st, res
}

// clusterID is the --instance-id of relay i of a stage.
func clusterID(name string, i int) string { return fmt.Sprintf("%s-%c", name, 'a'+i) }

// startClusterStage starts n relays in cluster name; natsFlags gives each
// (in order) its NATS URL and credentials flags.
func startClusterStage(ctx context.Context, l *Local, name string, natsFlags func(id string) []string, n int, flags ...string) (*clusterStage, *Result) {
	st := &clusterStage{name: name}
	for i := 0; i < n; i++ {
		id := clusterID(name, i)
		args := append(append(natsFlags(id), "--cluster-name", name,
			"--instance-id", id, "--cluster-lease", clusterLease.String(),
			"--probe-timeout", "500ms", "--upgrade-burst", "200", "--upgrade-rate", "200"), flags...)
		p, err := l.Start(ctx, args...)
		if err != nil {
			st.Close()
			r := Failf("start cluster relay %d: %v", i, err)
			return nil, &r
		}
		st.procs = append(st.procs, p)
		st.relays = append(st.relays, &Target{Base: p.URL, Local: l})
	}
	return st, nil
}

func (st *clusterStage) Close() {
	for _, c := range st.conns {
		_ = c.CloseNow()
	}
	for _, p := range st.procs {
		p.Stop()
	}
}

// binary connects a binary for serverID to relay i and waits until it holds
// the slot (its claim logged) or is refused (close code returned).
func (st *clusterStage) binary(ctx context.Context, i int, serverID string) (*websocket.Conn, *reader, int, error) {
	before := st.claims(i, serverID)
	c, _, err := st.relays[i].dial(ctx, "/v1/server", binaryHeaders(serverID))
	if err != nil {
		return nil, nil, 0, err
	}
	st.conns = append(st.conns, c)
	r := startReader(ctx, c)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if code := r.closeCode(0); code != 0 {
			return nil, nil, code, nil
		}
		if st.claims(i, serverID) > before {
			return c, r, 0, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, nil, 0, fmt.Errorf("binary neither claimed nor refused in 10s")
}

// claims counts relay i's binary_claimed log lines for serverID.
func (st *clusterStage) claims(i int, serverID string) int {
	n := 0
	for _, line := range st.procs[i].Log() {
		var m struct {
			Event    string `json:"event"`
			ServerID string `json:"server_id"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Event == "binary_claimed" && m.ServerID == serverID {
			n++
		}
	}
	return n
}

// phone connects a phone for serverID to relay i; it says hello so that the
// binary learns its conn_id, which is returned.
func (st *clusterStage) phone(ctx context.Context, i int, serverID string, bin *reader) (*websocket.Conn, *reader, string, error) {
	c, _, err := st.relays[i].dial(ctx, "/v1/client", phoneHeaders(serverID, "tok-"+randHex(8)))
	if err != nil {
		return nil, nil, "", err
	}
	st.conns = append(st.conns, c)
	r := startReader(ctx, c)
	hello := randHex(8)
	if err := writeJSON(ctx, c, map[string]string{"hello": hello}); err != nil {
		return nil, nil, "", err
	}
	var seen []envelope
	e, ok := bin.waitEnvelope(5*time.Second, &seen, func(e envelope) bool { return string(e.Frame) == `{"hello":"`+hello+`"}` })
	if !ok {
		return nil, nil, "", fmt.Errorf("phone on relay %d: its hello never reached the binary (closed %d)", i, r.closeCode(0))
	}
	return c, r, e.ConnID, nil
}

func sendTo(ctx context.Context, bin *websocket.Conn, connID string, frame any) error {
	return writeJSON(ctx, bin, map[string]any{"conn_id": connID, "frame": frame})
}
