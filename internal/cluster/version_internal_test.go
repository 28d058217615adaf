package cluster

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

// The version floor: at or above MinServerVersion passes, anything below,
// a pre-release of it, or a version that does not parse, is refused.
func TestServerVersionOK_Floor(t *testing.T) {
	for v, ok := range map[string]bool{
		"2.11.15": true, "2.11.16": true, "2.12.6": true, "2.12.10": true, "2.13.0": true, "2.15.3": true, "3.0.0": true, "2.11.15+build.7": true,
		"2.12.0": false, "2.12.5": false, "2.12.6-RC.2": false, // the 2.12 line had CVE-2026-33222 until 2.12.6
		"2.11.14": false, "2.11.15-RC.1": false, "2.10.27": false, "2.9.10": false, "2.9.25": false, "1.99.99": false,
		"": false, "2.11": false, "2.11.x": false, "v2.12.0": false, "2.+11.15": false, "2.11.15.1": false,
	} {
		err := serverVersionOK(v)
		if ok {
			require.NoError(t, err, v)
			continue
		}
		require.Error(t, err, v)
		require.True(t, errors.Is(err, ErrNATSTooOld), v)
		require.Contains(t, err.Error(), "cluster mode needs "+MinServerVersion+" or later, and 2.12.6 or later on 2.12")
	}
}
