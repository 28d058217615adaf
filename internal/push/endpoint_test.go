package push

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pyrycode/relay/internal/fcmtest"
)

// endpointCases: a bearer token (--fcm-endpoint) or a signed assertion
// (the key file's token_uri) may go over plain http only to a loopback IP
// literal. Every other http host is refused: names (which resolve wherever
// DNS or /etc/hosts says, "localhost" included), private and link-local
// ranges, IPv4-mapped IPv6 of a non-loopback address, zoned addresses,
// the forms of 127.0.0.1 only some resolvers read (decimal, hex, octal,
// short), and userinfo that puts a loopback-looking string before the real
// host. https goes anywhere; userinfo is refused there too.
var endpointCases = []struct {
	url string
	ok  bool
}{
	// Loopback IP literals: IPv4 127/8, IPv6 ::1, IPv4-mapped 127/8 (the
	// dialer unmaps it: it is 127.0.0.1 on the wire).
	{"http://127.0.0.1", true},
	{"http://127.0.0.1:8080", true},
	{"HTTP://127.0.0.1:8080/", true},
	{"http://127.255.255.254:1", true},
	{"http://[::1]:1", true},
	{"http://[0:0:0:0:0:0:0:1]", true},
	{"http://[::ffff:127.0.0.1]:1", true},
	{"http://[::ffff:7f00:1]:1", true},
	{"https://fcm.googleapis.com", true},
	{"https://oauth2.googleapis.com/token", true},
	{"https://10.0.0.1", true},
	{"https://localhost:8443", true},

	// Not loopback: other unicast, private, link-local, unspecified.
	{"http://10.0.0.1", false},
	{"http://10.255.255.255:80", false},
	{"http://172.16.0.1", false},
	{"http://172.31.255.254", false},
	{"http://192.168.1.1", false},
	{"http://169.254.169.254", false}, // a cloud metadata address
	{"http://100.64.0.1", false},
	{"http://8.8.8.8", false},
	{"http://0.0.0.0", false},
	{"http://255.255.255.255", false},
	{"http://[::]", false},
	{"http://[::2]", false},
	{"http://[fc00::1]", false},
	{"http://[fd12:3456::1]", false},
	{"http://[fe80::1]", false},
	{"http://[2001:db8::1]", false},
	{"http://[::ffff:10.0.0.1]", false},
	{"http://[::ffff:192.168.0.1]", false},
	{"http://[::ffff:169.254.169.254]", false},
	{"http://[::127.0.0.1]", false},     // IPv4-compatible: ::7f00:1, not loopback
	{"http://[64:ff9b::7f00:1]", false}, // NAT64 of 127.0.0.1: leaves the host
	{"http://[::1%25lo]", false},        // zoned: not a plain loopback literal
	{"http://[fe80::1%25eth0]", false},  // zoned link-local
	{"http://[::ffff:127.0.0.1%25lo]", false},

	// Names, however loopback they look.
	{"http://localhost", false},
	{"http://localhost:8080", false},
	{"http://LOCALHOST", false},
	{"http://localhost.", false},
	{"http://localhost.evil.example", false},
	{"http://127.0.0.1.nip.io", false},
	{"http://127.0.0.1.", false},
	{"http://loopback", false},
	{"http://ip6-localhost", false},

	// 127.0.0.1 spelled the ways inet_aton reads and ParseIP does not.
	{"http://2130706433", false},
	{"http://0x7f000001", false},
	{"http://0x7f.0.0.1", false},
	{"http://0177.0.0.1", false},
	{"http://127.000.000.001", false},
	{"http://127.1", false},
	{"http://127.0.1", false},
	{"http://１２７.0.0.1", false}, // fullwidth digits

	// Userinfo: the real host is after the '@'.
	{"http://127.0.0.1@evil.example", false},
	{"http://127.0.0.1:80@evil.example", false},
	{"http://user:pw@127.0.0.1", false},
	{"https://user:pw@fcm.googleapis.com", false},
	{"http://evil.example#@127.0.0.1", false},
	{"http://evil.example?@127.0.0.1", false},
	{`http://evil.example\@127.0.0.1`, false},
	{"http://[::1]@evil.example", false},

	// Not an absolute http(s) URL with a host.
	{"", false},
	{"127.0.0.1:8080", false},
	{"//127.0.0.1", false},
	{"http:127.0.0.1", false},
	{"http:///127.0.0.1", false},
	{"ws://127.0.0.1", false},
	{"ftp://127.0.0.1", false},
	{"file:///etc/passwd", false},
	{"https://", false},
	{"http://127.0.0.1%2e", false},
	{"http://127.0.0.1 .evil.example", false},
}

func TestCheckURL_PlainHTTPOnlyToLoopbackIPLiterals(t *testing.T) {
	for _, c := range endpointCases {
		err := checkURL(c.url)
		if c.ok {
			require.NoError(t, err, "%q", c.url)
		} else {
			require.ErrorIs(t, err, errBadURL, "%q is accepted", c.url)
		}
	}
}

// The same table through both doors: --fcm-endpoint (Options.Validate,
// what the relay refuses to start with) and the key file's token_uri
// (New's loadCredentials), which must refuse the file without quoting it.
func TestNew_EndpointAndTokenURI_PlainHTTPOnlyToLoopback(t *testing.T) {
	fake := fcmtest.New(t)
	dir := t.TempDir()
	for i, c := range endpointCases {
		o := Defaults()
		o.Endpoint = c.url
		err := o.Validate()
		switch {
		case c.url == "":
			require.NoError(t, err, "an empty --fcm-endpoint is the default")
		case c.ok:
			require.NoError(t, err, "--fcm-endpoint %q", c.url)
		default:
			require.ErrorIs(t, err, ErrInvalidOptions, "--fcm-endpoint %q is accepted", c.url)
			require.Contains(t, err.Error(), "--fcm-endpoint")
		}

		if c.url == "" {
			continue // no token_uri: the library's default (https)
		}
		creds := bytes.ReplaceAll(fake.CredentialsJSON(nil), []byte(`"`+fake.TokenURL()+`"`), []byte(jsonQuote(c.url)))
		require.NotEqual(t, fake.CredentialsJSON(nil), creds)
		p := filepath.Join(dir, "key-"+string(rune('a'+i%26))+".json")
		require.NoError(t, os.WriteFile(p, creds, 0o600))
		o = Defaults()
		o.CredentialsFile = p
		s, err := New(o, Deps{})
		if c.ok {
			require.NoError(t, err, "token_uri %q", c.url)
			require.NoError(t, s.Shutdown(context.Background()))
			continue
		}
		require.ErrorIs(t, err, ErrCredentialsInvalid, "token_uri %q is accepted", c.url)
		require.Contains(t, err.Error(), "token_uri")
		require.Contains(t, err.Error(), p)
		require.NotContains(t, err.Error(), c.url, "the refusal quotes the key file")
	}
}

func jsonQuote(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// trap is an HTTP server on loopback that counts what reaches it: where a
// redirect would carry the bearer token or the signed assertion.
type trap struct {
	srv  *httptest.Server
	hits atomic.Int32
}

func newTrap(t *testing.T) *trap {
	tr := &trap{}
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.trap","expires_in":3600,"token_type":"Bearer","name":"projects/p/messages/1"}`))
	}))
	t.Cleanup(tr.srv.Close)
	return tr
}

// redirector answers every request with code and a Location on to.
func redirector(t *testing.T, code int, to string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, to+r.URL.Path, code)
	}))
	t.Cleanup(s.Close)
	return s
}

// Neither request follows a redirect: a 307 or 308 would resend the
// bearer token (FCM) or the signed assertion (token endpoint) wherever
// Location points, plain http to anywhere included. The wake fails and
// nothing reaches the redirect's target.
func TestWake_RedirectsNeverFollowed_TokenOrAssertionStayPut(t *testing.T) {
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run("fcm "+http.StatusText(code), func(t *testing.T) {
			tr := newTrap(t)
			fake := fcmtest.New(t)
			r := newRigWith(t, fake, fake.WriteCredentials(t, t.TempDir(), nil), func(o *Options) {
				o.Endpoint = redirector(t, code, tr.srv.URL).URL
			})
			r.s.Wake("server-a", "fcm", "device-token")
			r.settle(1)
			require.Zero(t, tr.hits.Load(), "the FCM request followed a %d redirect", code)
			require.Equal(t, 1, r.count(OutcomeFailed))
			require.Equal(t, 1, fake.TokenRequests(), "the access token was earned")
		})
		t.Run("token "+http.StatusText(code), func(t *testing.T) {
			tr := newTrap(t)
			fake := fcmtest.New(t)
			red := redirector(t, code, tr.srv.URL)
			creds := bytes.ReplaceAll(fake.CredentialsJSON(nil), []byte(fake.TokenURL()), []byte(red.URL+"/token"))
			p := filepath.Join(t.TempDir(), "key.json")
			require.NoError(t, os.WriteFile(p, creds, 0o600))
			r := newRigWith(t, fake, p, nil)
			r.s.Wake("server-a", "fcm", "device-token")
			r.settle(1)
			require.Zero(t, tr.hits.Load(), "the token request followed a %d redirect", code)
			require.Equal(t, 1, r.count(OutcomeFailed))
			require.Empty(t, fake.Requests(), "no FCM request without an access token")
		})
	}
}
