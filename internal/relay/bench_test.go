package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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

// The binary leg's codec, per message.
func BenchmarkDecodeBinaryEnvelope(b *testing.B) {
	msg := []byte(`{"conn_id":"client-0f3a9c2e7b1d4e55","frame":{"v":2,"type":"noise_msg","data":"` + strings.Repeat("A", 200) + `"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeBinaryEnvelope(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPhoneFrameToEnvelope(b *testing.B) {
	frame := []byte(`{"v":2,"type":"noise_msg","data":"` + strings.Repeat("A", 200) + `"}`)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		if !validPhoneFrame(frame) {
			b.Fatal("invalid")
		}
		buf = appendPhoneEnvelope(buf[:0], "client-0f3a9c2e7b1d4e55", "", frame)
	}
}
