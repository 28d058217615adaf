package admission

import (
	"net/http"
	"net/netip"
	"testing"
)

func TestResolveClientIP(t *testing.T) {
	trusted := mustPrefixes(t, "127.0.0.2/32", "10.0.0.0/8", "2001:db8:ffff::/48")
	for _, tc := range []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{"UntrustedPeer_NoXFF", "198.51.100.1:5555", nil, "198.51.100.1"},
		{"UntrustedPeer_XFFIgnored", "198.51.100.1:5555", []string{"203.0.113.9"}, "198.51.100.1"},
		{"UntrustedPeer_TrustedLookingXFFIgnored", "198.51.100.1:5555", []string{"10.0.0.1"}, "198.51.100.1"},
		{"TrustedPeer_NoXFF_IsPeer", "127.0.0.2:80", nil, "127.0.0.2"},
		{"TrustedPeer_EmptyXFF_IsPeer", "127.0.0.2:80", []string{" , "}, "127.0.0.2"},
		{"TrustedPeer_SingleEntry", "127.0.0.2:80", []string{"203.0.113.9"}, "203.0.113.9"},
		{"TrustedPeer_SpoofedLeftEntries_RightmostUntrusted", "127.0.0.2:80", []string{"6.6.6.6, 7.7.7.7, 203.0.113.9"}, "203.0.113.9"},
		{"TrustedPeer_SpoofedTrustedLeft_RightmostUntrusted", "127.0.0.2:80", []string{"10.9.9.9, 203.0.113.9"}, "203.0.113.9"},
		{"TrustedChain_SkipsTrustedHops", "127.0.0.2:80", []string{"6.6.6.6, 203.0.113.9, 10.0.0.5, 10.1.2.3"}, "203.0.113.9"},
		{"TrustedChain_AcrossHeaderLines", "127.0.0.2:80", []string{"6.6.6.6, 203.0.113.9", "10.0.0.5"}, "203.0.113.9"},
		{"LaterHeaderLineWins", "127.0.0.2:80", []string{"203.0.113.9", "198.51.100.4"}, "198.51.100.4"},
		{"AllTrusted_Leftmost", "127.0.0.2:80", []string{"10.0.0.7, 10.0.0.5"}, "10.0.0.7"},
		{"MalformedInTrustedRegion_FallsBackToPeer", "127.0.0.2:80", []string{"203.0.113.9, unknown"}, "127.0.0.2"},
		{"MalformedRightmost_FallsBackToPeer", "127.0.0.2:80", []string{"not-an-ip"}, "127.0.0.2"},
		{"MalformedLeftOfUntrusted_Irrelevant", "127.0.0.2:80", []string{"garbage, 203.0.113.9"}, "203.0.113.9"},
		{"EmptyElementsSkipped", "127.0.0.2:80", []string{"203.0.113.9,, ,10.0.0.5,"}, "203.0.113.9"},
		{"EntryWithPort", "127.0.0.2:80", []string{"203.0.113.9:4711"}, "203.0.113.9"},
		{"BracketedIPv6", "127.0.0.2:80", []string{"[2001:db8::1]"}, "2001:db8::1"},
		{"BracketedIPv6WithPort", "127.0.0.2:80", []string{"[2001:db8::1]:443"}, "2001:db8::1"},
		{"BareIPv6", "127.0.0.2:80", []string{"2001:db8::1"}, "2001:db8::1"},
		{"TrustedIPv6Hop", "127.0.0.2:80", []string{"2001:db8::1, 2001:db8:ffff::5"}, "2001:db8::1"},
		{"MappedEntryNormalised", "127.0.0.2:80", []string{"::ffff:203.0.113.9"}, "203.0.113.9"},
		{"MappedTrustedHopSkipped", "127.0.0.2:80", []string{"203.0.113.9, ::ffff:10.0.0.5"}, "203.0.113.9"},
		{"MappedPeerIsTrusted", "[::ffff:127.0.0.2]:80", []string{"203.0.113.9"}, "203.0.113.9"},
		{"MappedUntrustedPeerNormalised", "[::ffff:198.51.100.1]:80", []string{"203.0.113.9"}, "198.51.100.1"},
		{"ZoneDropped", "[fe80::1%eth0]:80", nil, "fe80::1"},
		{"UnparseablePeer_Zero", "@", []string{"203.0.113.9"}, "invalid IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resolveClientIP(tc.remote, tc.xff, trusted).String(); got != tc.want {
				t.Fatalf("resolveClientIP(%q, %q) = %s, want %s", tc.remote, tc.xff, got, tc.want)
			}
		})
	}
}

func TestXFF_UntrustedPeer_IgnoredOverHTTP_SpoofCannotEvadeLimit(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.TrustedProxies = mustPrefixes(t, "127.0.0.2/32")
	o.UpgradeRate = 1
	o.UpgradeBurst = 2
	o.Now = clk.Now
	c := newController(t, o)
	s := startServer(t, c.Middleware(echoIP), nil)
	attacker := clientFrom("127.0.0.3")

	// Each request claims a new address; all are charged to the socket peer.
	for i, spoof := range []string{"203.0.113.1", "203.0.113.2"} {
		got := get(t, attacker, s.URL, "X-Forwarded-For", spoof)
		if got.status != http.StatusOK || got.body != "127.0.0.3" {
			t.Fatalf("request %d: %d %q, want 200 charged to 127.0.0.3", i, got.status, got.body)
		}
	}
	wantResult(t, get(t, attacker, s.URL, "X-Forwarded-For", "203.0.113.3"), http.StatusTooManyRequests, "1")
}

func TestXFF_TrustedPeer_HonouredOverHTTP_RightmostUntrusted(t *testing.T) {
	clk := newFakeClock()
	o := testOptions()
	o.TrustedProxies = mustPrefixes(t, "127.0.0.2/32", "10.0.0.0/8")
	o.UpgradeRate = 1
	o.UpgradeBurst = 1
	o.Now = clk.Now
	c := newController(t, o)
	s := startServer(t, c.Middleware(echoIP), nil)
	proxy := clientFrom("127.0.0.2")

	// The client prepended a fake address; the proxy chain appended the truth.
	got := get(t, proxy, s.URL, "X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.0.0.5")
	if got.status != http.StatusOK || got.body != "203.0.113.9" {
		t.Fatalf("got %d %q, want 200 charged to 203.0.113.9", got.status, got.body)
	}
	// Same real client, different spoofed prefix: same bucket, now empty.
	wantResult(t, get(t, proxy, s.URL, "X-Forwarded-For", "7.7.7.7, 203.0.113.9, 10.0.0.5"), http.StatusTooManyRequests, "1")
	// Another real client behind the same proxy has its own bucket.
	got = get(t, proxy, s.URL, "X-Forwarded-For", "203.0.113.10")
	if got.status != http.StatusOK || got.body != "203.0.113.10" {
		t.Fatalf("got %d %q, want 200 charged to 203.0.113.10", got.status, got.body)
	}
	// The proxy itself is not charged for its clients.
	if got := get(t, proxy, s.URL); got.status != http.StatusOK || got.body != "127.0.0.2" {
		t.Fatalf("proxy's own request: %d %q", got.status, got.body)
	}
}

func BenchmarkClientIP_TrustedXFF(b *testing.B) {
	trusted := mustPrefixes(b, "127.0.0.2/32", "10.0.0.0/8")
	xff := []string{"6.6.6.6, 203.0.113.9, 10.0.0.5"}
	b.ReportAllocs()
	for b.Loop() {
		if resolveClientIP("127.0.0.2:4711", xff, trusted) != netip.MustParseAddr("203.0.113.9") {
			b.Fatal("wrong address")
		}
	}
}
