package relay

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPhoneHeaders_RepeatedHeadersRefused(t *testing.T) {
	for _, name := range []string{HeaderServerID, HeaderToken, HeaderUserAgent, HeaderDeviceName} {
		h := phoneHeaders(sid)
		h.Add(name, "second")
		_, err := ParsePhoneHeaders(h)
		require.ErrorIs(t, err, ErrBadUpgradeHeaders, name)
	}
	h := phoneHeaders(sid)
	h.Del(HeaderDeviceName)
	got, err := ParsePhoneHeaders(h)
	require.NoError(t, err, "the device name is optional")
	require.Empty(t, got.DeviceName)
}
