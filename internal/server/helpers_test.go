package server

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/metrics"
)

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func newTestMetrics() *metrics.Metrics { return metrics.New() }

func newRecorder() *httptest.ResponseRecorder { return httptest.NewRecorder() }

func mustRequest(t *testing.T, method, target string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, target, nil)
	require.NoError(t, err)
	return r
}
