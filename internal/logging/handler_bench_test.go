package logging

import (
	"errors"
	"io"
	"log/slog"
	"testing"
)

// BenchmarkHandler compares this handler with a bare slog.JSONHandler on a
// typical relay line. Read the ratio as allowlist/plain ns/op.
func BenchmarkHandler(b *testing.B) {
	run := func(b *testing.B, h slog.Handler) {
		l := slog.New(h).With("event", "phone_joined", "server_id", "0f3a9c2e-7b1d-4e55-9a1b-2c3d4e5f6a7b")
		err := errors.New("read: connection reset by peer")
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			l.Info("phone joined", "conn_id", "client-0f3a9c2e7b1d4e55", "role", "phone",
				"user_agent", "PyryPhone/2.3 (iOS 18.1)", "count", 3, "error", err)
		}
	}
	b.Run("plain", func(b *testing.B) { run(b, slog.NewJSONHandler(io.Discard, nil)) })
	b.Run("allowlist", func(b *testing.B) { run(b, NewHandler(io.Discard, nil)) })
}
