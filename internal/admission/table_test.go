package admission

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// synthAddr returns the i-th of 2^32 distinct IPv4 addresses (never dialled).
func synthAddr(i int) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(i)+0x0b000000) // from 11.0.0.0
	return netip.AddrFrom4(b)
}

func TestTable_200kAddresses_NeverExceedsMaxTrackedIPs(t *testing.T) {
	clk := newFakeClock()
	o := DefaultOptions() // MaxTrackedIPs 65536, real rate limit
	o.MaxConnsPerIP = 1
	o.Now = clk.Now
	c := newController(t, o)

	// Some addresses hold a connection through the whole flood.
	const holders = 1000
	held := make([]*entry, holders)
	for i := range held {
		e, r, _ := c.admit(synthAddr(i))
		if r != "" {
			t.Fatalf("holder %d refused: %s", i, r)
		}
		held[i] = e
	}

	const flood = 200_000
	for i := holders; i < holders+flood; i++ {
		clk.Advance(time.Microsecond) // buckets barely refill: evictions are forced
		e, r, _ := c.admit(synthAddr(i))
		if r != "" {
			t.Fatalf("flood address %d refused: %s", i, r)
		}
		c.release(e)
		if n := c.Stats().TrackedIPs; n > o.MaxTrackedIPs {
			t.Fatalf("after %d addresses the table holds %d entries, cap %d", i, n, o.MaxTrackedIPs)
		}
	}
	st := c.Stats()
	if st.TrackedIPs != o.MaxTrackedIPs || st.ForcedEvictions == 0 {
		t.Fatalf("Stats after flood = %+v; want a full table and forced evictions", st)
	}
	// Pinned entries survived: their open count still enforces the per-IP cap.
	for i := 0; i < holders; i += 97 {
		if _, r, _ := c.admit(synthAddr(i)); r != ReasonPerIPCap {
			t.Fatalf("holder %d after flood: admit = %q, want per_ip_cap (entry lost)", i, r)
		}
	}
	for _, e := range held {
		c.release(e)
	}
	if st := c.Stats(); st.OpenConns != 0 {
		t.Fatalf("OpenConns after releasing all = %d", st.OpenConns)
	}
}

func TestTable_FullBucketsEvictedBeforeForcing(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.MaxConns = 5
	o.MaxTrackedIPs = 10
	o.UpgradeRate = 10
	o.UpgradeBurst = 5
	o.Now = clk.Now
	c := newController(t, o)
	admitRelease := func(i int) {
		t.Helper()
		e, r, _ := c.admit(synthAddr(i))
		if r != "" {
			t.Fatalf("address %d refused: %s", i, r)
		}
		c.release(e)
	}
	for i := 0; i < 10; i++ {
		admitRelease(i)
	}
	clk.Advance(time.Second) // every bucket refilled: all evictable for free
	for i := 10; i < 20; i++ {
		admitRelease(i)
	}
	if st := c.Stats(); st.TrackedIPs > 10 || st.ForcedEvictions != 0 {
		t.Fatalf("Stats = %+v; want ≤10 entries and no forced eviction", st)
	}
	// Without time passing, new addresses must push out drained buckets.
	for i := 20; i < 25; i++ {
		admitRelease(i)
	}
	if st := c.Stats(); st.TrackedIPs > 10 || st.ForcedEvictions == 0 {
		t.Fatalf("Stats = %+v; want ≤10 entries and forced evictions", st)
	}
}

func TestTable_IdleEntriesSweptWithoutPressure(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.UpgradeRate = 100
	o.UpgradeBurst = 5
	o.Now = clk.Now
	c := newController(t, o)
	for i := 0; i < 100; i++ {
		e, r, _ := c.admit(synthAddr(i))
		if r != "" {
			t.Fatalf("address %d refused: %s", i, r)
		}
		c.release(e)
	}
	clk.Advance(time.Second)
	for i := 0; i < 60; i++ {
		clk.Advance(20 * time.Millisecond) // two tokens' worth per request
		e, r, _ := c.admit(synthAddr(1000))
		if r != "" {
			t.Fatalf("request %d refused: %s", i, r)
		}
		c.release(e)
	}
	if n := c.Stats().TrackedIPs; n > 1 {
		t.Fatalf("TrackedIPs = %d after idle entries refilled; want the sweep to drop them", n)
	}
}

func TestTable_IdleTTL_EvictsUnrefilledBucket(t *testing.T) {
	clk := newFakeClock()
	tab := newTable(10, 0.001, 5, time.Minute) // refill takes 5000 s
	e := tab.get(synthAddr(1), clk.Now())
	e.lim.AllowN(clk.Now(), 5)
	if tab.evictable(e, clk.Now()) {
		t.Fatal("drained, fresh entry evictable")
	}
	clk.Advance(time.Minute)
	if !tab.evictable(e, clk.Now()) {
		t.Fatal("entry idle for IdleTTL not evictable")
	}
	tab.pin(e)
	if tab.evictable(e, clk.Now()) {
		t.Fatal("entry with an open connection evictable")
	}
}

func TestTable_AllEntriesPinned_RefusesNewAddress(t *testing.T) {
	now := newFakeClock().Now()
	tab := newTable(2, 1, 1, time.Minute)
	for i := 0; i < 2; i++ {
		tab.pin(tab.get(synthAddr(i), now))
	}
	if e := tab.get(synthAddr(2), now); e != nil {
		t.Fatal("table with every entry pinned made room by evicting a pinned entry")
	}
	if tab.len() != 2 {
		t.Fatalf("len = %d, want 2", tab.len())
	}
}

// TestTable_MemoryPerEntry_Bounded backs the "≈250 B per entry" figure in
// table.go that the MaxTrackedIPs documentation relies on.
func TestTable_MemoryPerEntry_Bounded(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a full table")
	}
	const n = DefaultMaxTrackedIPs
	const maxPerEntry = 320
	now := newFakeClock().Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tab := newTable(n, DefaultUpgradeRate, DefaultUpgradeBurst, DefaultIdleTTL)
	for i := 0; i < n; i++ {
		tab.get(synthAddr(i), now).lim.AllowN(now, 1)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per tracked address", per)
	if per > maxPerEntry {
		t.Fatalf("%.0f bytes per tracked address, documented bound %d", per, maxPerEntry)
	}
	runtime.KeepAlive(tab)
}

// BenchmarkAdmit is the hot path: resolve nothing, admit and release one
// request for one of 1024 known addresses.
func BenchmarkAdmit(b *testing.B) {
	o := DefaultOptions()
	o.UpgradeBurst = 1 << 30 // never refuse: measure the admitting path
	c := newController(b, o)
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = synthAddr(i)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			e, r, _ := c.admit(addrs[i&1023])
			if r != "" {
				b.Fatal(r)
			}
			c.release(e)
			i++
		}
	})
}
