package attacks

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// fakeGoogle stands in for the two Google services a push wake reaches, as
// real HTTP servers on loopback: an OAuth2 token endpoint that verifies the
// service account's RS256 assertion against the account's public key, and
// an FCM HTTP v1 endpoint that checks each request's path, bearer token and
// body (exactly {"message":{"token","data":{"kind":"wake"},"android":
// {"priority":"HIGH"}}}). A device token starting "hang" is not answered
// until the request ends or release is called; one starting "redirect" is
// answered 307 to a trap server that counts what reaches it; any other is
// answered 200. The token endpoint can be made to stall requests
// (stallTokens) or redirect them to the trap (redirectTokens).
// It is the attack suite's own copy (this package imports nothing of the
// relay's), kept to what the push scenarios need.
type fakeGoogle struct {
	srv     *http.Server
	ln      net.Listener
	base    string
	key     *rsa.PrivateKey
	project string
	email   string
	release chan struct{}
	relOnce sync.Once

	// trap receives what a followed redirect would carry.
	trap     *http.Server
	trapBase string

	mu          sync.Mutex
	stallLeft   int         // token requests still to stall
	stalls      []stallSpan // the stalled token requests
	redirectTok bool        // token requests are redirected to the trap
	trapHits    int
	issued      map[string]bool
	tokenOK     int
	tokenBad    int
	sends       []fcmSend
	inFlight    int
	maxInFlight int
}

// stallSpan is one stalled token request: when it arrived and when the
// client gave up on it (zero while it is still open).
type stallSpan struct{ began, ended time.Time }

// fcmSend is one request the fake FCM received.
type fcmSend struct {
	DeviceToken string
	Problem     string // "" when the request had exactly the wake's shape
}

const fakeKeyID = "attacks0key0id"

var (
	fakeKeyOnce sync.Once
	fakeKey     *rsa.PrivateKey
	fakeKeyErr  error
)

// startFakeGoogle listens on 127.0.0.1.
// localFakeGoogle is the push scenarios' prologue: a local target and a
// fake Google (token endpoint and FCM) on loopback, which the caller closes.
func localFakeGoogle(t *Target) (*Local, *fakeGoogle, *Result) {
	l, skip := localOrSkip(t)
	if skip != nil {
		return nil, nil, skip
	}
	g, err := startFakeGoogle()
	if err != nil {
		r := Failf("fake FCM: %v", err)
		return nil, nil, &r
	}
	return l, g, nil
}

func startFakeGoogle() (*fakeGoogle, error) {
	fakeKeyOnce.Do(func() { fakeKey, fakeKeyErr = rsa.GenerateKey(rand.Reader, 2048) })
	if fakeKeyErr != nil {
		return nil, fakeKeyErr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &fakeGoogle{ln: ln, base: "http://" + ln.Addr().String(), key: fakeKey,
		project: "attacks-" + randHex(4), email: "relay@attacks.iam.gserviceaccount.com",
		release: make(chan struct{}), issued: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", g.serveToken)
	mux.HandleFunc("/", g.serveFCM)
	g.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = g.srv.Serve(ln) }()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = g.srv.Close()
		return nil, err
	}
	g.trapBase = "http://" + tl.Addr().String()
	g.trap = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.trapHits++
		g.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"ya29.trap","expires_in":3600,"token_type":"Bearer","name":"projects/p/messages/1"}`))
	})}
	go func() { _ = g.trap.Serve(tl) }()
	return g, nil
}

// stallTokens makes the token endpoint read the next n requests and never
// answer them, until the client gives up (or Close).
func (g *fakeGoogle) stallTokens(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stallLeft = n
}

// stalled returns the stalled token requests so far.
func (g *fakeGoogle) stalled() []stallSpan {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]stallSpan(nil), g.stalls...)
}

// redirectTokens makes the token endpoint answer 307 to the trap while on.
func (g *fakeGoogle) redirectTokens(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.redirectTok = on
}

// trapped counts the requests that reached the trap.
func (g *fakeGoogle) trapped() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.trapHits
}

// Close ends hanging requests and stops the server.
func (g *fakeGoogle) Close() {
	g.Release()
	_ = g.srv.Close()
	_ = g.trap.Close()
}

// Release answers every hanging request (and later "hang" tokens) with 200.
func (g *fakeGoogle) Release() { g.relOnce.Do(func() { close(g.release) }) }

// writeCredentials writes a service-account key file (mode 0600) whose
// token_uri is the fake token endpoint and returns its path.
func (g *fakeGoogle) writeCredentials(dir string) (string, error) {
	return g.writeCredentialsURI(dir, g.base+"/token")
}

// writeCredentialsURI is writeCredentials with another token_uri.
func (g *fakeGoogle) writeCredentialsURI(dir, tokenURI string) (string, error) {
	der, err := x509.MarshalPKCS8PrivateKey(g.key)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": g.project, "private_key_id": fakeKeyID,
		"private_key":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email": g.email, "client_id": "1", "token_uri": tokenURI,
	})
	p := filepath.Join(dir, "fcm-"+randHex(4)+".json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return "", err
	}
	return p, os.Chmod(p, 0o600)
}

// stats returns the sends so far, the token requests accepted and refused,
// and the most requests that were in flight at once.
func (g *fakeGoogle) stats() (sends []fcmSend, tokenOK, tokenBad, maxInFlight int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]fcmSend(nil), g.sends...), g.tokenOK, g.tokenBad, g.maxInFlight
}

// issuedTokens lists the access tokens handed out (they must never be logged).
func (g *fakeGoogle) issuedTokens() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for t := range g.issued {
		out = append(out, t)
	}
	return out
}

func (g *fakeGoogle) serveToken(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	redirect, stall := g.redirectTok, g.stallLeft > 0
	if stall {
		g.stallLeft--
		g.stalls = append(g.stalls, stallSpan{began: time.Now()})
	}
	i := len(g.stalls) - 1
	g.mu.Unlock()
	switch {
	case redirect:
		http.Redirect(w, r, g.trapBase+r.URL.Path, http.StatusTemporaryRedirect)
		return
	case stall:
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-g.release:
		}
		g.mu.Lock()
		g.stalls[i].ended = time.Now()
		g.mu.Unlock()
		return
	}
	if !g.validAssertion(r) {
		g.mu.Lock()
		g.tokenBad++
		g.mu.Unlock()
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
		return
	}
	tok := "ya29.attacks-" + randHex(12)
	g.mu.Lock()
	g.tokenOK++
	g.issued[tok] = true
	g.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"access_token":"` + tok + `","expires_in":3600,"token_type":"Bearer"}`))
}

// validAssertion: a JWT-bearer grant whose RS256 signature verifies with
// the service account's public key and whose claims name the account, the
// FCM scope and this endpoint.
func (g *fakeGoogle) validAssertion(r *http.Request) bool {
	if r.Method != http.MethodPost || r.ParseForm() != nil ||
		r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		return false
	}
	parts := strings.Split(r.PostForm.Get("assertion"), ".")
	if len(parts) != 3 {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if rsa.VerifyPKCS1v15(&g.key.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		return false
	}
	var hdr struct{ Alg, Kid string }
	var c struct {
		Iss, Scope, Aud string
		Exp             int64
	}
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	return json.Unmarshal(hb, &hdr) == nil && json.Unmarshal(cb, &c) == nil &&
		hdr.Alg == "RS256" && hdr.Kid == fakeKeyID && c.Iss == g.email &&
		c.Scope == "https://www.googleapis.com/auth/firebase.messaging" &&
		c.Aud == g.base+"/token" && c.Exp > time.Now().Unix()
}

func (g *fakeGoogle) serveFCM(w http.ResponseWriter, r *http.Request) {
	var body bytes.Buffer
	_, _ = body.ReadFrom(http.MaxBytesReader(w, r.Body, 64<<10))
	var top map[string]json.RawMessage
	var msg map[string]json.RawMessage
	send := fcmSend{}
	if json.Unmarshal(body.Bytes(), &top) == nil {
		_ = json.Unmarshal(top["message"], &msg)
		_ = json.Unmarshal(msg["token"], &send.DeviceToken)
	}
	g.mu.Lock()
	issued := g.issued[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	g.mu.Unlock()
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/v1/projects/"+g.project+"/messages:send":
		send.Problem = "method or path " + r.Method + " " + r.URL.Path
	case !issued:
		send.Problem = "no bearer token the token endpoint issued"
	case len(top) != 1 || len(msg) != 3 || send.DeviceToken == "" ||
		string(msg["data"]) != `{"kind":"wake"}` || string(msg["android"]) != `{"priority":"HIGH"}`:
		send.Problem = "body is not the fixed wake shape"
	}
	g.mu.Lock()
	g.sends = append(g.sends, send)
	g.inFlight++
	g.maxInFlight = max(g.maxInFlight, g.inFlight)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inFlight--
		g.mu.Unlock()
	}()
	if send.Problem != "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if strings.HasPrefix(send.DeviceToken, "redirect") {
		http.Redirect(w, r, g.trapBase+r.URL.Path, http.StatusTemporaryRedirect)
		return
	}
	if strings.HasPrefix(send.DeviceToken, "hang") {
		select {
		case <-r.Context().Done():
			return
		case <-g.release:
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"name":"projects/` + g.project + `/messages/1"}`))
}

// countSends counts the well-formed sends whose device token starts with prefix.
func countSends(sends []fcmSend, prefix string) (n int, problems []string) {
	for _, s := range sends {
		if s.Problem != "" {
			problems = append(problems, s.Problem)
			continue
		}
		if strings.HasPrefix(s.DeviceToken, prefix) {
			n++
		}
	}
	return n, problems
}
