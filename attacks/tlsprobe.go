package attacks

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// TLS handshake probes for the TLS scenarios. A probe is a real crypto/tls
// client whose ClientHello offers only the versions or suites under test.
// The server's bytes are recorded, so a refusal is read off the wire (its
// first record is a fatal alert, not a ServerHello) rather than guessed
// from the client's error text.

// TLS record layer (RFC 5246 §6.2.1, RFC 8446 §5.1), the first bytes the
// server sends back:
//
//	content_type(1) legacy_version(2) length(2) fragment...
//
// and an alert fragment (RFC 8446 §6):
//
//	level(1) description(1)
const (
	recordAlert     = 21
	recordHandshake = 22

	alertHandshakeFailure = 40
	alertProtocolVersion  = 70
)

// alertNames names the alerts a refusal may carry, for evidence.
var alertNames = map[int]string{
	0: "close_notify", 10: "unexpected_message", 40: "handshake_failure", 47: "illegal_parameter",
	50: "decode_error", 70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
	86: "inappropriate_fallback", 112: "unrecognized_name",
}

func alertName(a int) string {
	if n, ok := alertNames[a]; ok {
		return fmt.Sprintf("%s (%d)", n, a)
	}
	return fmt.Sprintf("alert %d", a)
}

// probeTimeout bounds one handshake.
const probeTimeout = 10 * time.Second

// handshakeOutcome is what the server did with one ClientHello.
type handshakeOutcome struct {
	// ServerHello: the server's first record was a handshake record, i.e.
	// it negotiated. Completed adds that the whole handshake succeeded.
	ServerHello, Completed bool
	// Alert is the fatal alert the server answered instead (-1: none).
	Alert   int
	Version uint16 // negotiated (Completed only)
	Suite   uint16
	LeafKey string // key of the certificate the relay served to this hello, e.g. "ECDSA P-256" (Completed only)
	Err     error  // the client's handshake error, if any
}

func (o handshakeOutcome) String() string {
	switch {
	case o.Completed:
		return fmt.Sprintf("negotiated %s with %s", tls.VersionName(o.Version), tls.CipherSuiteName(o.Suite))
	case o.ServerHello:
		return fmt.Sprintf("server answered a ServerHello (client then gave up: %v)", o.Err)
	case o.Alert >= 0:
		return "refused with " + alertName(o.Alert)
	}
	return fmt.Sprintf("no alert and no ServerHello (%v)", o.Err)
}

// refusedWith reports whether the server refused before negotiating, with
// the given alert (any alert when want < 0).
func (o handshakeOutcome) refusedWith(want int) bool {
	return !o.ServerHello && o.Alert >= 0 && (want < 0 || o.Alert == want)
}

// recordingConn keeps the first bytes the server sends.
type recordingConn struct {
	net.Conn
	first []byte
}

func (r *recordingConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	if keep := 16 - len(r.first); keep > 0 {
		r.first = append(r.first, p[:min(n, keep)]...)
	}
	return n, err
}

// probeTLS runs one handshake with cfg. The error is for a failed TCP dial
// only; everything the server did is in the outcome.
func (t *Target) probeTLS(ctx context.Context, cfg *tls.Config) (handshakeOutcome, error) {
	c, err := t.dialTCP(ctx, netip.Addr{})
	if err != nil {
		return handshakeOutcome{Alert: -1}, err
	}
	defer c.Close()
	rc := &recordingConn{Conn: c}
	tc := tls.Client(rc, cfg)
	hctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	herr := tc.HandshakeContext(hctx)
	o := readFirstRecord(rc.first)
	o.Err = herr
	if herr == nil {
		st := tc.ConnectionState()
		o.ServerHello, o.Completed, o.Version, o.Suite = true, true, st.Version, st.CipherSuite
		if len(st.PeerCertificates) > 0 {
			o.LeafKey = keyType(st.PeerCertificates[0].PublicKey)
		}
	}
	return o, nil
}

// readFirstRecord classifies the server's first TLS record.
func readFirstRecord(b []byte) handshakeOutcome {
	o := handshakeOutcome{Alert: -1}
	if len(b) < 5 {
		return o
	}
	switch b[0] {
	case recordHandshake:
		o.ServerHello = true
	case recordAlert:
		if binary.BigEndian.Uint16(b[3:5]) >= 2 && len(b) >= 7 {
			o.Alert = int(b[6])
		}
	}
	return o
}

// keyType names a certificate's public key: its algorithm, then its size
// or curve ("RSA 2048", "ECDSA P-256").
func keyType(k any) string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", k)
}

// sslv3ClientHello is a minimal SSL 3.0 ClientHello, which crypto/tls can
// no longer send (RFC 6101 §5.6.1.2):
//
//	record:    type(1)=0x16 version(2)=0x0300 length(2)
//	handshake: type(1)=0x01 length(3)
//	           client_version(2)=0x0300 random(32) session_id_len(1)=0
//	           cipher_suites_len(2) suites(2 each)
//	           compression_methods_len(1)=1 null(1)=0
//
// The suites are the SSL 3.0-era ones a downgraded server would pick:
// RSA and ECDHE with AES-CBC, and 3DES.
func sslv3ClientHello() []byte {
	suites := []uint16{0xC014, 0xC013, 0xC00A, 0xC009, 0x0035, 0x002F, 0x000A}
	body := []byte{0x03, 0x00}
	random := make([]byte, 32)
	copy(random, randHex(16))
	body = append(body, random...)
	body = append(body, 0) // session_id
	body = binary.BigEndian.AppendUint16(body, uint16(2*len(suites)))
	for _, s := range suites {
		body = binary.BigEndian.AppendUint16(body, s)
	}
	body = append(body, 1, 0) // compression: null only
	hs := append([]byte{0x01, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	rec := []byte{recordHandshake, 0x03, 0x00, byte(len(hs) >> 8), byte(len(hs))}
	return append(rec, hs...)
}

// probeSSLv3 sends sslv3ClientHello and classifies the answer.
func (t *Target) probeSSLv3(ctx context.Context) (handshakeOutcome, error) {
	c, err := t.dialTCP(ctx, netip.Addr{})
	if err != nil {
		return handshakeOutcome{Alert: -1}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write(sslv3ClientHello()); err != nil {
		return handshakeOutcome{Alert: -1, Err: err}, nil
	}
	b := make([]byte, 7)
	n, err := io.ReadFull(c, b)
	o := readFirstRecord(b[:n])
	o.Err = err
	return o, nil
}

// needHTTPS is the Skip for a TLS scenario against a plain-HTTP target.
func needHTTPS(t *Target) *Result {
	if t.Base.Scheme == "https" {
		return nil
	}
	r := Skipf("the target is plain HTTP; TLS scenarios need an https:// target (the relay's own TLS listener)")
	return &r
}

// hostOverride sends every request with Host set to host, so WebSocket
// dials through the shared helpers present the relay's name while the URL
// holds its address.
type hostOverride struct {
	host string
	rt   http.RoundTripper
}

func (h hostOverride) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	r2.Host = h.host
	return h.rt.RoundTrip(r2)
}

// withHost is a copy of t whose WebSocket dials send Host: host.
func (t *Target) withHost(host string) *Target {
	tr := &http.Transport{TLSClientConfig: t.tlsConfig(), Proxy: nil}
	return t.withClient(&http.Client{Transport: hostOverride{host, tr}})
}

// healthzAs is healthz with the given Host header.
func (t *Target) healthzAs(ctx context.Context, host string) (health, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.httpURL("/healthz"), nil)
	if err != nil {
		return health{}, 0, err
	}
	req.Host = host
	resp, err := t.httpClient().Do(req)
	if err != nil {
		return health{}, 0, err
	}
	defer resp.Body.Close()
	var h health
	if resp.StatusCode == http.StatusOK {
		err = json.NewDecoder(io.LimitReader(resp.Body, 64*1024)).Decode(&h)
	}
	return h, resp.StatusCode, err
}
