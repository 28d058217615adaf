package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// BenchmarkRoundTrip compares one small frame's round trip through the relay
// (phone -> relay -> binary echo -> relay -> phone) with the same round trip
// to a direct WebSocket echo server: the baseline measured in the same run.
// Report the relay figure as a ratio of the direct one.
func BenchmarkRoundTrip(b *testing.B) {
	frame := []byte(`{"v":2,"type":"noise_msg","data":"` + strings.Repeat("A", 200) + `"}`)

	b.Run("direct", func(b *testing.B) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := websocket.Accept(w, r, acceptOptions)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, m, err := c.Read(context.Background())
				if err != nil {
					return
				}
				if c.Write(context.Background(), typ, m) != nil {
					return
				}
			}
		}))
		defer srv.Close()
		c := benchDial(b, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		defer c.CloseNow()
		benchLoop(b, c, frame)
	})

	b.Run("relay", func(b *testing.B) {
		rl, err := New(Defaults(), Deps{})
		if err != nil {
			b.Fatal(err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/v1/server", rl.ServeBinary)
		mux.HandleFunc("/v1/client", rl.ServePhone)
		srv := httptest.NewServer(mux)
		defer srv.Close()
		defer rl.Shutdown(context.Background())
		base := "ws" + strings.TrimPrefix(srv.URL, "http")
		bin := benchDial(b, base+"/v1/server", binaryHeaders("bench"))
		defer bin.CloseNow()
		for rl.Stats().Binaries == 0 {
		}
		go echoBinary(bin) // the daemon: sends every frame back to its phone
		phone := benchDial(b, base+"/v1/client", phoneHeaders("bench"))
		defer phone.CloseNow()
		benchLoop(b, phone, frame)
	})
}

func benchDial(b *testing.B, url string, hdr http.Header) *websocket.Conn {
	c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func benchLoop(b *testing.B, c *websocket.Conn, frame []byte) {
	ctx := context.Background()
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func echoBinary(c *websocket.Conn) {
	ctx := context.Background()
	for {
		_, m, err := c.Read(ctx)
		if err != nil {
			return
		}
		var env struct {
			ConnID string          `json:"conn_id"`
			Frame  json.RawMessage `json:"frame"`
		}
		if json.Unmarshal(m, &env) != nil || env.Frame == nil {
			continue
		}
		out := fmt.Appendf(nil, `{"conn_id":%q,"frame":%s}`, env.ConnID, env.Frame)
		if c.Write(ctx, websocket.MessageText, out) != nil {
			return
		}
	}
}

// benchFrame is a phone frame of about size bytes: a noise_msg whose data
// is base64-like, the shape real traffic has.
func benchFrame(size int) []byte {
	const head, tail = `{"v":2,"type":"noise_msg","data":"`, `"}`
	return []byte(head + strings.Repeat("A", max(size-len(head)-len(tail), 0)) + tail)
}

var benchSizes = []int{128, 512, 16 << 10, 64 << 10}

// The binary leg, binary -> phone: scanning one envelope. The encoding/json
// sub-benchmark is the map-based reading the scanner replaced (the fuzz
// oracle's), measured in the same run as the baseline.
func BenchmarkEnvelopeScan_BinaryToPhone(b *testing.B) {
	for _, size := range benchSizes {
		msg := []byte(`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":` + string(benchFrame(size)) + `}`)
		b.Run(fmt.Sprintf("scanner/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := scanBinaryEnvelope(msg); !ok {
					b.Fatal("rejected")
				}
			}
		})
		b.Run(fmt.Sprintf("encoding_json/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := oracleEnvelope(msg); !ok {
					b.Fatal("rejected")
				}
			}
		})
	}
}

// The phone leg, phone -> binary: validating one frame and wrapping it.
func BenchmarkEnvelopeScan_PhoneToBinary(b *testing.B) {
	for _, size := range benchSizes {
		frame := benchFrame(size)
		buf := make([]byte, 0, size+64)
		b.Run(fmt.Sprintf("scanner/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				if !validPhoneFrame(frame) {
					b.Fatal("invalid")
				}
				buf = appendPhoneEnvelope(buf[:0], "client-0f3a9c2e7b1d4e55", "", frame)
			}
		})
		b.Run(fmt.Sprintf("encoding_json/%d", size), func(b *testing.B) {
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				if !utf8.Valid(frame) || !json.Valid(frame) {
					b.Fatal("invalid")
				}
				buf = appendPhoneEnvelope(buf[:0], "client-0f3a9c2e7b1d4e55", "", frame)
			}
		})
	}
}

// The registry lookup every binary -> phone message makes, in a registry
// holding 1,000 server-ids of 16 phones each.
func BenchmarkPhoneLookup(b *testing.B) {
	reg := newRegistry(DefaultGracePeriod, DefaultMaxPhones, manualNever, nil)
	var target *binaryConn
	var ids [][]byte
	for i := range 1000 {
		bc := &binaryConn{serverID: fmt.Sprintf("server-%d", i)}
		if !reg.claim(bc).ok {
			b.Fatal("claim")
		}
		for range DefaultMaxPhones {
			p := &phoneConn{serverID: bc.serverID}
			if err := reg.join(p); err != nil {
				b.Fatal(err)
			}
			if i == 500 {
				ids = append(ids, []byte(p.connID))
			}
		}
		if i == 500 {
			target = bc
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if reg.lookupPhone(target, ids[i%len(ids)]) == nil {
			b.Fatal("not found")
		}
		i++
	}
}

// One frame through a phone's outbox: push by the binary's reader, next and
// done by the phone's writer, with the relay-wide budget charged.
func BenchmarkOutbox(b *testing.B) {
	frame := benchFrame(512)
	o := newOutbox(DefaultPhoneQueueBytes, &byteBudget{limit: DefaultMaxQueuedBytes})
	b.ReportAllocs()
	for b.Loop() {
		if r := o.push(outItem{frame: frame}); r != "" {
			b.Fatal(r)
		}
		it, ok := o.next()
		if !ok {
			b.Fatal("stopped")
		}
		o.done(it)
	}
}
