package attacks

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// Slow-loris: a client that sends request headers one byte at a time holds
// a connection (and a goroutine) for as long as the server lets it. The
// defence is http.Server.ReadHeaderTimeout (--read-header-timeout): every
// trickling connection must be closed by that timeout plus slack, while a
// legitimate binary<->phone pair keeps relaying.
//
// The local bound is the timeout plus a slack smaller than the timeout
// itself: the relay's http.Server also has ReadTimeout = 2 ×
// ReadHeaderTimeout, which would close the trickling connections at 2 s
// were the header timeout gone, so only the header timeout meets 1.6 s.
// Remotely the network's latency is unknown and the bound is looser.
const (
	slowLorisConnsLocal  = 64
	slowLorisConnsRemote = 20
	slowLorisLocalRHT    = time.Second
	slowLorisRemoteRHT   = 5 * time.Second // the deployed default
	slowLorisLocalSlack  = 600 * time.Millisecond
	slowLorisRemoteSlack = 3 * time.Second
	slowLorisTrickle     = 200 * time.Millisecond
)

func slowLoris() Scenario {
	return Scenario{
		ID:      "ATK-SLOWLORIS",
		Title:   "Trickled request headers are cut off by ReadHeaderTimeout; a live pair keeps relaying",
		Threats: []string{"TM-DOS-1"},
		Mode:    RemoteSafe,
		Bounds:  fmt.Sprintf("%d trickling TCP connections, opened one after another (one byte per %v each, until %v after the last is open with the default --read-header-timeout; relay attack --read-header-timeout D changes it), one binary and one phone", slowLorisConnsRemote, slowLorisTrickle, slowLorisRemoteRHT+slowLorisRemoteSlack),
		BehindProxy: ProxyNote{TestsProxy, "the proxy reads the request headers before the relay sees any of them, so its own " +
			"header timeout (nginx: client_header_timeout) closes the trickling connections, not the relay's --read-header-timeout; " +
			"the live pair relays through both"},
		Run: runSlowLoris,
	}
}

func runSlowLoris(ctx context.Context, t *Target) Result {
	conns, rht, slack := slowLorisConnsRemote, slowLorisRemoteRHT, slowLorisRemoteSlack
	if t.ReadHeaderTimeout > 0 {
		rht = t.ReadHeaderTimeout
	}
	if t.Local != nil {
		conns, rht, slack = slowLorisConnsLocal, slowLorisLocalRHT, slowLorisLocalSlack
	}
	tgt, _, stop, err := dedicated(ctx, t, "--read-header-timeout", rht.String())
	if err != nil {
		return Failf("%v", err)
	}
	defer stop()

	s, err := newSession(ctx, tgt)
	if err != nil {
		return Failf("legitimate pair: %v", err)
	}
	defer s.Close()
	ph, err := s.addPhone(nil)
	if err != nil {
		return Failf("legitimate pair: %v", err)
	}

	// Each connection is timed from its own dial: dialling 64 of them on a
	// loaded machine takes a good part of the slack, and the relay's
	// timeout starts when it accepts each one. The attack ends once the
	// last dialled has had its budget.
	budget := rht + slack
	actx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	dialedAt := make([]time.Duration, conns)
	closedAt := make([]time.Duration, conns) // 0: still open at the end
	start := time.Now()
	dialErrs := 0
	var mu sync.Mutex
	for i := 0; i < conns; i++ {
		c, err := tgt.dialRaw(ctx)
		if err != nil {
			dialErrs++
			continue
		}
		dialedAt[i] = time.Since(start)
		wg.Add(2)
		readDone := make(chan struct{})
		go func(i int, c net.Conn) { // closed when any read returns an error (EOF, reset)
			defer wg.Done()
			defer close(readDone)
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					mu.Lock()
					closedAt[i] = time.Since(start) // late if the attack closed it
					mu.Unlock()
					return
				}
			}
		}(i, c)
		go func(c net.Conn) {
			defer wg.Done()
			defer c.Close()
			req := fmt.Sprintf("GET /healthz HTTP/1.1\r\nHost: %s\r\nUser-Agent: slowloris\r\n", tgt.vhost())
			for j := 0; ; j++ {
				var b []byte
				if j < len(req) {
					b = []byte{req[j]}
				} else {
					b = []byte{"X-a: b\r\n"[(j-len(req))%8]}
				}
				if _, err := c.Write(b); err != nil {
					<-readDone
					return
				}
				select {
				case <-readDone:
					return
				case <-actx.Done():
					return
				case <-time.After(slowLorisTrickle):
				}
			}
		}(c)
	}
	if dialErrs == conns {
		return Failf("could not open any attack connection")
	}
	lastDial := time.Since(start)
	end := time.AfterFunc(budget, cancel)
	defer end.Stop()

	// The legitimate pair relays throughout the attack.
	var worst time.Duration
	trips := 0
	for actx.Err() == nil {
		rtt, err := s.roundTrip(ph, 2*time.Second)
		if err != nil {
			cancel()
			wg.Wait()
			return Failf("legitimate pair stopped relaying during the attack after %d round trips: %v", trips, err)
		}
		trips++
		if rtt > worst {
			worst = rtt
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()

	open, latest := 0, time.Duration(0)
	for i := range closedAt {
		if dialedAt[i] == 0 {
			continue // not dialled
		}
		if held := closedAt[i] - dialedAt[i]; closedAt[i] == 0 || held > budget {
			open++
		} else if held > latest {
			latest = held
		}
	}
	if open > 0 {
		return Failf("%d of %d trickling connections still open %v after their dial (read-header-timeout %v + %v slack; dialled over %v)",
			open, conns-dialErrs, budget, rht, slack, lastDial.Round(time.Millisecond))
	}
	return Passf("%d trickling connections each closed within %v of its dial (read-header-timeout %v; dialled over %v); pair made %d round trips, worst %v",
		conns-dialErrs, latest.Round(10*time.Millisecond), rht, lastDial.Round(time.Millisecond), trips, worst.Round(time.Millisecond))
}
