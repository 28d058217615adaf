package relay

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// A state-machine test of the registry against a model small enough to be
// obviously right (protocol §7). The registry runs for real; only its clock
// is manual, and connections are bare structs: the registry touches nothing
// of a connection but serverID, holding, connID, slot and joinedUnder. Each
// phone also has a real outbox charging one relay-wide budget, fed by what
// binaries route to it and drained through the writer's own writeNext, so
// the model checks that the budget is conserved: it always equals the cost
// of what is queued, and is exactly zero whenever no phone has queued work.

// manualTimer is one grace timer scheduled through the registry's timerFunc.
// The state machine decides when (and whether) it fires; a stopped timer may
// still fire, which is what time.AfterFunc does when Stop loses the race
// with an expiry already under way.
type manualTimer struct {
	f       func()
	stopped bool
	fired   bool
	// What the model says the timer belongs to.
	serverID string
	grace    int
}

type manualClock struct{ timers []*manualTimer }

func (c *manualClock) after(_ time.Duration, f func()) func() bool {
	mt := &manualTimer{f: f}
	c.timers = append(c.timers, mt)
	return func() bool {
		pending := !mt.fired && !mt.stopped
		mt.stopped = true
		return pending
	}
}

// modelSlot is the model's view of one server-id.
type modelSlot struct {
	holder *binaryConn // nil while in grace
	grace  int         // the current grace period's id; 0 while held
	phones map[*phoneConn]*binaryConn
}

type registryModel struct {
	reg   *registry
	clock *manualClock

	slots     map[string]*modelSlot
	closed    bool
	nextGrace int

	binaries []*binaryConn
	phones   []*phoneConn
	pending  []claimAttempt // refused claims whose incumbent is "being probed"

	evicted    map[*phoneConn]bool // what onEvict reported during this step
	lastChange *RegistryStats      // what onChange (the metrics gauges) last saw

	budget *byteBudget
	queues map[*phoneConn]*modelQueue
}

// modelQueue is the model's view of one phone's outbox.
type modelQueue struct {
	items      []outItem
	sealed     bool // a close was queued, or the phone's connection ended
	writerDone bool // its writer returned (a close was written, or a write failed)
}

type claimAttempt struct{ b, incumbent *binaryConn }

const modelMaxPhones = 3

// modelServerIDs: mostly one server-id, so that claims, releases and
// expiries pile up on the same slot; a second one to check isolation.
var modelServerIDs = []string{sid, sid, sid, "b"}

var connIDPattern = regexp.MustCompile(`^client-[0-9a-f]{16}$`)

func newRegistryModel() *registryModel {
	m := &registryModel{clock: &manualClock{}, slots: map[string]*modelSlot{}, evicted: map[*phoneConn]bool{},
		budget: &byteBudget{limit: 1 << 30}, queues: map[*phoneConn]*modelQueue{}}
	m.reg = newRegistry(time.Minute, modelMaxPhones, m.clock.after, func(ps []*phoneConn) {
		for _, p := range ps {
			if m.evicted[p] {
				panic(fmt.Sprintf("phone %s evicted twice", p.connID))
			}
			m.evicted[p] = true
		}
	})
	m.reg.onChange = func(s RegistryStats) { m.lastChange = &s }
	return m
}

// evictAll empties a model slot and returns the phones it held.
func (m *registryModel) evictAll(s *modelSlot) map[*phoneConn]bool {
	out := map[*phoneConn]bool{}
	for p := range s.phones {
		out[p] = true
	}
	s.phones = map[*phoneConn]*binaryConn{}
	return out
}

// checkEvicted compares what onEvict reported in this step with want.
func (m *registryModel) checkEvicted(t *rapid.T, want map[*phoneConn]bool) {
	t.Helper()
	if len(want) != len(m.evicted) {
		t.Fatalf("evicted %d phones, model says %d", len(m.evicted), len(want))
	}
	for p := range want {
		if !m.evicted[p] {
			t.Fatalf("phone %s should have been evicted", p.connID)
		}
	}
	m.evicted = map[*phoneConn]bool{}
}

func (m *registryModel) claim(t *rapid.T) {
	id := rapid.SampledFrom(modelServerIDs).Draw(t, "server-id")
	b := &binaryConn{serverID: id}
	m.binaries = append(m.binaries, b)
	res := m.reg.claim(b)
	s := m.slots[id]
	want := map[*phoneConn]bool{}
	switch {
	case m.closed:
		if res.ok || res.incumbent != nil {
			t.Fatalf("claim after shutdown: %+v", res)
		}
	case s == nil:
		if !res.ok {
			t.Fatalf("claim of a free server-id refused")
		}
		m.slots[id] = &modelSlot{holder: b, phones: map[*phoneConn]*binaryConn{}}
	case s.holder != nil:
		if res.ok || res.incumbent != s.holder {
			t.Fatalf("claim of a held server-id: %+v, want incumbent %p", res, s.holder)
		}
		m.pending = append(m.pending, claimAttempt{b, s.holder})
	default: // reclaim during grace: the phones must handshake again
		if !res.ok {
			t.Fatalf("reclaim during grace refused")
		}
		want = m.evictAll(s)
		s.holder, s.grace = b, 0
	}
	m.checkEvicted(t, want)
}

// drawPending removes and returns one refused claim.
func (m *registryModel) drawPending(t *rapid.T) claimAttempt {
	if len(m.pending) == 0 {
		t.Skip("no claim is waiting on a probe")
	}
	i := rapid.IntRange(0, len(m.pending)-1).Draw(t, "pending")
	a := m.pending[i]
	m.pending = append(m.pending[:i], m.pending[i+1:]...)
	return a
}

// probeAnswered: the incumbent answered; the newcomer is closed 4409 and
// never touches the registry again.
func (m *registryModel) probeAnswered(t *rapid.T) {
	m.drawPending(t)
	m.checkEvicted(t, nil)
}

// takeover: the probe failed. It succeeds only if the incumbent still holds
// the slot; otherwise (it released, grace expired, someone else took over)
// nothing changes.
func (m *registryModel) takeover(t *rapid.T) {
	a := m.drawPending(t)
	ok := m.reg.takeover(a.b, a.incumbent)
	s := m.slots[a.b.serverID]
	wantOK := !m.closed && s != nil && s.holder == a.incumbent
	if ok != wantOK {
		t.Fatalf("takeover = %v, model %v", ok, wantOK)
	}
	want := map[*phoneConn]bool{}
	if ok {
		want = m.evictAll(s)
		s.holder = a.b
	}
	m.checkEvicted(t, want)
}

// release: any binary's connection ends, including one that was replaced,
// refused, or released already. Only the holder changes anything.
func (m *registryModel) release(t *rapid.T) {
	if len(m.binaries) == 0 {
		t.Skip("no binary yet")
	}
	b := rapid.SampledFrom(m.binaries).Draw(t, "binary")
	before := len(m.clock.timers)
	m.reg.release(b)
	s := m.slots[b.serverID]
	if s != nil && s.holder == b {
		m.nextGrace++
		s.holder, s.grace = nil, m.nextGrace
		if !m.closed {
			if len(m.clock.timers) != before+1 {
				t.Fatalf("release scheduled %d grace timers, want 1", len(m.clock.timers)-before)
			}
			mt := m.clock.timers[before]
			mt.serverID, mt.grace = b.serverID, s.grace
		}
	}
	if len(m.clock.timers) != before && (s == nil || s.holder != nil || m.closed) {
		t.Fatalf("a release that changed nothing scheduled a timer")
	}
	m.checkEvicted(t, nil)
}

// expire fires a pending (never stopped) grace timer: a grace period ends.
func (m *registryModel) expire(t *rapid.T) {
	m.fire(t, func(mt *manualTimer) bool { return !mt.stopped })
}

// fireStale fires a timer that was stopped by a reclaim: its Stop lost the
// race with an expiry already waiting on the registry's lock, and the expiry
// runs late, possibly long after its slot was reclaimed, expired, recreated.
func (m *registryModel) fireStale(t *rapid.T) {
	m.fire(t, func(mt *manualTimer) bool { return mt.stopped })
}

// fire runs one not-yet-run timer that pick selects. Only the timer of the
// slot's current grace period may remove it.
func (m *registryModel) fire(t *rapid.T, pick func(*manualTimer) bool) {
	var live []*manualTimer
	for _, mt := range m.clock.timers {
		if !mt.fired && pick(mt) {
			live = append(live, mt)
		}
	}
	if len(live) == 0 {
		t.Skip("no such timer to fire")
	}
	mt := rapid.SampledFrom(live).Draw(t, "timer")
	mt.fired = true
	mt.f()
	want := map[*phoneConn]bool{}
	if s := m.slots[mt.serverID]; s != nil && s.holder == nil && s.grace == mt.grace {
		want = m.evictAll(s)
		delete(m.slots, mt.serverID)
	}
	m.checkEvicted(t, want)
}

func (m *registryModel) join(t *rapid.T) {
	id := rapid.SampledFrom(modelServerIDs).Draw(t, "server-id")
	p := &phoneConn{serverID: id, out: newOutbox(1<<20, m.budget)}
	m.phones = append(m.phones, p)
	m.queues[p] = &modelQueue{}
	err := m.reg.join(p)
	s := m.slots[id]
	switch {
	case m.closed || s == nil:
		if !errors.Is(err, ErrNoBinary) {
			t.Fatalf("join of an unheld server-id: %v, want ErrNoBinary", err)
		}
	case len(s.phones) >= modelMaxPhones:
		if !errors.Is(err, ErrTooManyPhones) {
			t.Fatalf("join beyond the cap: %v, want ErrTooManyPhones", err)
		}
	default:
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		if !connIDPattern.MatchString(p.connID) || p.joinedUnder != s.holder {
			t.Fatalf("joined phone: conn_id %q, joinedUnder %p, holder %p", p.connID, p.joinedUnder, s.holder)
		}
		s.phones[p] = s.holder
	}
	m.checkEvicted(t, nil)
}

// leave: any phone's connection ends, including one evicted, refused or
// gone already. The close notice goes to the binary the phone joined under,
// and only if that binary still holds the slot.
func (m *registryModel) leave(t *rapid.T) {
	if len(m.phones) == 0 {
		t.Skip("no phone yet")
	}
	p := rapid.SampledFrom(m.phones).Draw(t, "phone")
	p.out.stop() // as phoneConn.run does once the reader has ended
	q := m.queues[p]
	q.items, q.sealed = nil, true
	got := m.reg.leave(p)
	var want *binaryConn
	if s := m.slots[p.serverID]; s != nil {
		if under, ok := s.phones[p]; ok {
			delete(s.phones, p)
			if s.holder != nil && s.holder == under {
				want = s.holder
			}
		}
	}
	if got != want {
		t.Fatalf("leave notified %p, model %p", got, want)
	}
	m.checkEvicted(t, nil)
}

// route: a binary addresses a conn_id. It reaches the phone only if the
// binary holds the slot and the phone is in it; never across server-ids.
func (m *registryModel) route(t *rapid.T) {
	if len(m.binaries) == 0 || len(m.phones) == 0 {
		t.Skip("nothing to route between")
	}
	b := rapid.SampledFrom(m.binaries).Draw(t, "binary")
	p := rapid.SampledFrom(m.phones).Draw(t, "phone")
	got := m.reg.lookupPhone(b, []byte(p.connID))
	var want *phoneConn
	if s := m.slots[b.serverID]; s != nil && s.holder == b {
		if _, ok := s.phones[p]; ok {
			want = p
		}
	}
	if got != want {
		t.Fatalf("lookupPhone(%s) = %p, model %p", p.connID, got, want)
	}
}

// deliver: a binary routes an envelope to a conn_id; if it reaches a phone
// (route checks that it reaches the right one) the item is queued there. Every
// shape a binary can send: a frame, a frame then a close, or a close alone
// ("frame" absent or null both parse to no frame).
func (m *registryModel) deliver(t *rapid.T) {
	if len(m.binaries) == 0 || len(m.phones) == 0 {
		t.Skip("nothing to route between")
	}
	b := rapid.SampledFrom(m.binaries).Draw(t, "binary")
	p := m.reg.lookupPhone(b, []byte(rapid.SampledFrom(m.phones).Draw(t, "phone").connID))
	if p == nil {
		return
	}
	var it outItem
	switch rapid.SampledFrom([]string{"frame", "frame+close", "close"}).Draw(t, "shape") {
	case "frame":
		it.frame = []byte(fmt.Sprintf(`{"pad":%q}`, rapid.StringN(0, 200, -1).Draw(t, "pad")))
	case "frame+close":
		it.frame = []byte(`{"bye":true}`)
		it.closeCode = 4000
	case "close":
		it.closeCode = rapid.SampledFrom([]int{1000, 4421, 4426}).Draw(t, "code")
	}
	q := m.queues[p]
	want := DropReason("")
	if q.sealed {
		want = DropPhoneClosing
	}
	if got := p.out.push(it); got != want {
		t.Fatalf("push to %s: %q, model %q", p.connID, got, want)
	}
	if want == "" {
		q.items = append(q.items, it)
		q.sealed = it.closeCode != 0
	}
}

// write: a phone's writer takes its next item, through the same writeNext
// as phoneConn.writeLoop, and the write succeeds or fails.
func (m *registryModel) write(t *rapid.T) {
	var ready []*phoneConn
	for _, p := range m.phones {
		if q := m.queues[p]; len(q.items) > 0 && !q.writerDone {
			ready = append(ready, p)
		}
	}
	if len(ready) == 0 {
		t.Skip("no phone has queued work")
	}
	p := rapid.SampledFrom(ready).Draw(t, "phone")
	fail := rapid.IntRange(0, 9).Draw(t, "writeFails") == 0
	errWrite := errors.New("write failed")
	var wrote []byte
	code, ok, err := p.out.writeNext(func(f []byte) error {
		wrote = f
		if fail {
			return errWrite
		}
		return nil
	})
	q := m.queues[p]
	head := q.items[0]
	q.items = q.items[1:]
	wantErr := fail && head.frame != nil
	if !ok || code != head.closeCode || string(wrote) != string(head.frame) || (err != nil) != wantErr {
		t.Fatalf("writeNext = (%d, %v, %v) wrote %q; model head %+v, write fails %v", code, ok, err, wrote, head, fail)
	}
	if err != nil || code != 0 {
		q.writerDone = true // the writer returns; what is left waits for stop
	}
}

// shutdown closes the registry, rarely, so most runs explore a live one.
func (m *registryModel) shutdown(t *rapid.T) {
	if m.closed || rapid.IntRange(0, 9).Draw(t, "shutdown") != 0 {
		return
	}
	m.reg.close()
	m.closed = true
	m.checkEvicted(t, nil)
}

// check holds after every step.
func (m *registryModel) check(t *rapid.T) {
	st := m.reg.Stats()
	var want RegistryStats
	for _, s := range m.slots {
		if s.holder != nil {
			want.Binaries++
		} else {
			want.Grace++
		}
		want.Phones += len(s.phones)
	}
	if st != want {
		t.Fatalf("Stats() = %+v, model %+v", st, want)
	}
	if m.lastChange != nil && *m.lastChange != st {
		t.Fatalf("metrics saw %+v, /healthz sees %+v", *m.lastChange, st)
	}

	// Budget conservation: the relay-wide budget is the cost of what is
	// queued, phone by phone, and exactly zero whenever nothing is.
	var total int64
	for _, p := range m.phones {
		var n int64
		for _, it := range m.queues[p].items {
			n += it.cost()
		}
		if got := p.out.backlog.Load(); got != n {
			t.Fatalf("phone %s: backlog %d, its queued items cost %d", p.connID, got, n)
		}
		total += n
	}
	if used := m.budget.used.Load(); used != total {
		if total == 0 {
			t.Fatalf("no phone has queued work, yet the relay-wide budget holds %d bytes", used)
		}
		t.Fatalf("relay-wide budget %d, queued items cost %d", used, total)
	}

	// At most one live binary per server-id, and it is the model's holder.
	holders := map[string]int{}
	for _, b := range m.binaries {
		s := m.slots[b.serverID]
		isHolder := s != nil && s.holder == b
		if b.holding.Load() != isHolder {
			t.Fatalf("binary %p of %s: holding=%v, model %v", b, b.serverID, b.holding.Load(), isHolder)
		}
		if b.holding.Load() {
			holders[b.serverID]++
		}
	}
	for id, n := range holders {
		if n > 1 {
			t.Fatalf("%d live binaries hold %s", n, id)
		}
	}

	m.reg.mu.Lock()
	defer m.reg.mu.Unlock()
	if len(m.reg.slots) != len(m.slots) {
		t.Fatalf("registry has %d slots, model %d", len(m.reg.slots), len(m.slots))
	}
	for id, ms := range m.slots {
		s := m.reg.slots[id]
		if s == nil || s.id != id || s.binary != ms.holder {
			t.Fatalf("slot %s: %+v, model holder %p", id, s, ms.holder)
		}
		// Phones exist only under a held or in-grace slot: exactly the
		// model's, each knowing its slot.
		if len(s.phones) != len(ms.phones) {
			t.Fatalf("slot %s has %d phones, model %d", id, len(s.phones), len(ms.phones))
		}
		for connID, p := range s.phones {
			if _, ok := ms.phones[p]; !ok || p.connID != connID || p.slot != s || p.serverID != id {
				t.Fatalf("slot %s holds an unexpected phone %s", id, connID)
			}
		}
		// A slot in grace always has a pending timer that will end it;
		// otherwise it (and its phones) would leak. Shutdown stops them.
		if ms.holder == nil && !m.closed {
			found := false
			for _, mt := range m.clock.timers {
				found = found || (mt.serverID == id && mt.grace == ms.grace && !mt.fired && !mt.stopped)
			}
			if !found {
				t.Fatalf("slot %s is in grace with no pending expiry", id)
			}
		}
	}
}

// checkN runs rapid.Check with n checks unless the run sets its own count
// (-rapid.checks or RAPID_CHECKS), so one test can be cheaper or more
// thorough than rapid's default of 100. Tests in this package do not run in
// parallel, so swapping the flag value is safe.
func checkN(t *testing.T, n int, prop func(*rapid.T)) {
	t.Helper()
	explicit := os.Getenv("RAPID_CHECKS") != ""
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "rapid.checks" })
	if fl := flag.Lookup("rapid.checks"); fl != nil && !explicit {
		old := fl.Value.String()
		if err := fl.Value.Set(strconv.Itoa(n)); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = fl.Value.Set(old) }()
	}
	rapid.Check(t, prop)
}

// The registry is cheap to drive (about 0.15 ms a sequence under -race), so
// this runs 3000 sequences rather than rapid's 100: the stale-timer bug below
// needs about eight specific steps on one server-id and showed up in roughly
// one run in three at 3000.
func TestRegistry_StateMachineAgainstModel(t *testing.T) {
	checkN(t, 3000, func(t *rapid.T) {
		m := newRegistryModel()
		t.Repeat(map[string]func(*rapid.T){
			"claim":         m.claim,
			"probeAnswered": m.probeAnswered,
			"takeover":      m.takeover,
			"release":       m.release,
			"expire":        m.expire,
			"fireStale":     m.fireStale,
			"join":          m.join,
			"leave":         m.leave,
			"route":         m.route,
			"deliver":       m.deliver,
			"write":         m.write,
			"shutdown":      m.shutdown,
			"":              m.check,
		})
	})
}

// Found by the state machine: a grace timer whose Stop lost the race (its
// expiry was already waiting on the lock) used to remove a newer slot for
// the same server-id, because grace sequence numbers restart with each new
// slot. Here the stale timer of the first slot's first grace period fires
// while a second slot, created after the first expired, is in its own grace.
func TestRegistry_StaleGraceTimerAfterSlotRecreated_ChangesNothing(t *testing.T) {
	clock := &manualClock{}
	var evicted []*phoneConn
	reg := newRegistry(time.Minute, 4, clock.after, func(ps []*phoneConn) { evicted = append(evicted, ps...) })

	b1 := &binaryConn{serverID: sid}
	reg.claim(b1)
	reg.release(b1) // grace 1: timer 0
	b2 := &binaryConn{serverID: sid}
	if !reg.claim(b2).ok { // reclaim stops timer 0, but it is already running
		t.Fatal("reclaim refused")
	}
	reg.release(b2) // grace 2: timer 1
	clock.timers[1].f()
	if st := reg.Stats(); st != (RegistryStats{}) {
		t.Fatalf("grace expiry left %+v", st)
	}

	b3 := &binaryConn{serverID: sid}
	reg.claim(b3) // a new slot for the same server-id
	reg.release(b3)
	p := &phoneConn{serverID: sid}
	if err := reg.join(p); err != nil {
		t.Fatalf("join during grace: %v", err)
	}
	clock.timers[0].f() // the first slot's stale expiry finally runs

	if st := reg.Stats(); st != (RegistryStats{Phones: 1, Grace: 1}) {
		t.Fatalf("stale timer changed the newer slot: %+v", st)
	}
	if len(evicted) != 0 {
		t.Fatalf("stale timer evicted %d phones of the newer slot", len(evicted))
	}
	clock.timers[len(clock.timers)-1].f() // the newer slot's own expiry still works
	if st := reg.Stats(); st != (RegistryStats{}) || len(evicted) != 1 || evicted[0] != p {
		t.Fatalf("own expiry: %+v, evicted %d", st, len(evicted))
	}
}
