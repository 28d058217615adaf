package relay

import (
	"io"
	"log/slog"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/metrics"
)

// relay_connection_closes_total has every role and cause at 0 from the
// start (issue 21, 9d: its dashboard panel was empty until the first
// close), and a close the relay counts lands on a pre-registered series.
func TestConnectionCloses_PreRegisteredAtZero(t *testing.T) {
	m := metrics.New()
	rl, err := New(Defaults(), Deps{Log: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: m})
	require.NoError(t, err)
	require.Equal(t, 2*(len(closeCodes)+2), testutil.CollectAndCount(m.Closes))
	for _, role := range []string{"binary", "phone"} {
		for _, cause := range []string{"1001", "1011", "4404", "1013", "peer", "directive"} {
			require.Zero(t, testutil.ToFloat64(m.Closes.WithLabelValues(role, cause)), role+" "+cause)
		}
	}
	rl.countClose("phone", closeCause{code: CodeInternal})
	require.Equal(t, 1.0, testutil.ToFloat64(m.Closes.WithLabelValues("phone", strconv.Itoa(int(CodeInternal)))))
	require.Equal(t, 2*(len(closeCodes)+2), testutil.CollectAndCount(m.Closes), "no series beyond the pre-registered ones")
}
