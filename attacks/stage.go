package attacks

import (
	"context"
	"fmt"
	"time"
)

// The shared prologue of a scenario, "a relay + a binary + phones":
//
//	st, err := newStage(ctx, t, 2, "--read-timeout", "1s")
//	if err != nil {
//		return Failf("%v", err)
//	}
//	defer st.Close()
//	s, a, b := st.s, st.phones[0], st.phones[1]
//
// Locally the relay is one of the scenario's own, started with flags (and a
// metrics listener, st.m); remotely it is the target as is and flags are
// ignored. Close ends the phones as a real daemon refuses one (a close-only
// directive), then the binary, then the relay, which is when the budget
// conservation check of Process.Stop runs.

// localOrSkip returns the local handles or a Skip result.
func localOrSkip(t *Target) (*Local, *Result) {
	if t.Local == nil {
		r := Skipf("local-only: needs the relay's process")
		return nil, &r
	}
	return t.Local, nil
}

// dedicated starts a relay of its own for a scenario that needs tuned
// flags, or returns the target as is when running remotely. The returned
// stop func is never nil.
func dedicated(ctx context.Context, t *Target, flags ...string) (*Target, *Process, func(), error) {
	if t.Local == nil {
		return t, nil, func() {}, nil
	}
	p, err := t.Local.Start(ctx, flags...)
	if err != nil {
		if p != nil {
			return nil, p, func() {}, fmt.Errorf("start relay %v: %w; log: %s", flags, err, tail(p.LogText(), 400))
		}
		return nil, nil, func() {}, fmt.Errorf("start relay %v: %w", flags, err)
	}
	nt := &Target{Base: p.URL, Local: t.Local}
	return nt, p, func() { p.Stop() }, nil
}

// stage is a relay, one binary on a fresh server-id and its phones.
type stage struct {
	tgt    *Target
	proc   *Process        // nil remotely
	m      *metricsScraper // nil remotely
	s      *session
	phones []*phone // joined to s, in order; none reading yet
	stop   func()
}

// newStage sets the stage: a relay (dedicated locally, with flags), a
// binary, then nPhones phones joined to it. On error everything it opened
// is closed again.
func newStage(ctx context.Context, t *Target, nPhones int, flags ...string) (*stage, error) {
	tgt, p, stop, err := dedicated(ctx, t, flags...)
	if err != nil {
		return nil, err
	}
	st := &stage{tgt: tgt, proc: p, stop: stop}
	if p != nil {
		if st.m, err = newMetricsScraper(ctx, p); err != nil {
			stop()
			return nil, fmt.Errorf("setup: %w", err)
		}
	}
	if st.s, err = newSession(ctx, tgt); err != nil {
		stop()
		return nil, fmt.Errorf("setup: %w", err)
	}
	for range nPhones {
		ph, err := st.s.addPhone(nil)
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("setup: %w", err)
		}
		st.phones = append(st.phones, ph)
	}
	return st, nil
}

// daemonCloseCode is what a real pyry daemon sends to refuse a phone
// (4421, a failed handshake): a close-only directive, no frame.
const daemonCloseCode = 4421

// Close ends the stage. Each phone of the session that is still open is
// first refused by its binary with a close-only directive, as a real
// daemon does, and given a moment to see the close: those directives are
// the work that must leave the relay's queued-bytes budget at zero
// (TM-DOS-8), which Process.Stop then checks.
func (st *stage) Close() {
	s := st.s
	if s != nil {
		var waiting []*reader
		for _, ph := range s.Phones {
			r := ph.StartReading()
			if r.closeCode(0) != 0 {
				continue
			}
			if writeJSON(s.ctx, s.Bin, envelope{ConnID: ph.ConnID, CloseCode: daemonCloseCode}) == nil {
				waiting = append(waiting, r)
			}
		}
		for _, r := range waiting {
			r.closeCode(2 * time.Second)
		}
		s.Close()
	}
	st.stop()
}
