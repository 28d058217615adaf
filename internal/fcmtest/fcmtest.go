// Package fcmtest runs the two Google services a push wake talks to as real
// HTTP servers on loopback, for tests: an OAuth2 token endpoint that
// verifies the service account's signed JWT assertion against the
// account's public key, and an FCM HTTP v1 endpoint that checks every
// request's shape and bearer token and answers as the test asks.
//
// It is test support: nothing in the relay binary imports it. Besides tests,
// cmd/relay-fakefcm serves it on loopback so an operator can try push
// locally (docs/deploy.md, "Trying push and autocert locally").
package fcmtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Scope is the OAuth2 scope an FCM sender must ask for.
const Scope = "https://www.googleapis.com/auth/firebase.messaging"

// Token prefixes choose the fake FCM's answer (Server.Answer's default).
const (
	TokenUnregistered = "unregistered" // 404 with errorCode UNREGISTERED
	TokenInvalid      = "invalid"      // 400 INVALID_ARGUMENT
	TokenRateLimited  = "ratelimited"  // 429 with Retry-After: RetryAfter
	TokenUnavailable  = "unavailable"  // 503 with Retry-After: RetryAfter
	TokenServerError  = "servererror"  // 500
	TokenHang         = "hang"         // no answer until the request ends or Release
	TokenRevoke       = "revoke"       // 401, and the access token it carried is revoked
	// Anything else: 200 with a message name.
)

// TokenStall is how the token endpoint stalls a request (StallTokens).
type TokenStall int

const (
	// StallAccept: the TCP connection is accepted and never read.
	StallAccept TokenStall = iota + 1
	// StallAnswer: the request is read and never answered.
	StallAnswer
	// StallBody: 200, the headers and half an access-token body, never the rest.
	StallBody
)

// RetryAfter is the Retry-After the fake sends with 429 and 503.
const RetryAfter = 30 * time.Second

// Request is one request the fake FCM received.
type Request struct {
	DeviceToken string // message.token
	Bearer      string // the access token it carried
	// Problem is "" when the request had exactly the expected shape, else
	// what was wrong with it (the fake then answered 400).
	Problem string
}

// Server is a fake token endpoint and a fake FCM endpoint.
type Server struct {
	OAuth, FCM *httptest.Server
	Project    string
	Email      string
	KeyID      string
	// Key signs the credentials WriteCredentials writes; Trusted is the
	// public key the token endpoint verifies assertions with (Key's own
	// unless a test swaps it to prove verification is real).
	Key     *rsa.PrivateKey
	Trusted *rsa.PublicKey
	// ExpiresIn is the lifetime, in seconds, of the access tokens issued.
	ExpiresIn int
	// Notify, when set before the first request, is called with each FCM
	// request once it is recorded (cmd/relay-fakefcm prints them).
	Notify func(Request)

	release chan struct{}
	relOnce sync.Once

	mu            sync.Mutex
	stall         TokenStall
	stallLeft     int        // connections (StallAccept) or requests still to stall
	stalled       int        // stalled so far
	held          []net.Conn // StallAccept's connections, closed by Release
	issued        map[string]bool
	tokenRequests int
	tokenRejected []string // why each rejected assertion was rejected
	requests      []Request
	inFlight      int
}

var (
	keyOnce sync.Once
	key     *rsa.PrivateKey
	keyErr  error
)

// testKey is one RSA key per test binary: generating one takes tens of
// milliseconds and a test may start several servers.
func testKey() (*rsa.PrivateKey, error) {
	keyOnce.Do(func() { key, keyErr = rsa.GenerateKey(rand.Reader, 2048) })
	return key, keyErr
}

// NewKey returns a fresh RSA key (for a credentials file the token endpoint
// must not trust).
func NewKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// New starts both servers on 127.0.0.1 and stops them at the end of t.
func New(t testing.TB) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts both servers on 127.0.0.1 outside a test; Close stops them.
func Start() (*Server, error) {
	k, err := testKey()
	if err != nil {
		return nil, err
	}
	s := &Server{
		Project: "relay-test-project", Email: "relay-push@relay-test-project.iam.gserviceaccount.com",
		KeyID: "0123456789abcdef", Key: k, Trusted: &k.PublicKey, ExpiresIn: 3600,
		release: make(chan struct{}), issued: map[string]bool{},
	}
	s.OAuth = httptest.NewUnstartedServer(http.HandlerFunc(s.serveToken))
	s.OAuth.Listener = stallListener{s.OAuth.Listener, s}
	s.OAuth.Start()
	s.FCM = httptest.NewServer(http.HandlerFunc(s.serveFCM))
	return s, nil
}

// Close ends hanging requests and stops both servers.
func (s *Server) Close() {
	s.Release()
	s.FCM.Close()
	s.OAuth.Close()
}

// TokenURL is the token endpoint's URL (the credentials' token_uri).
func (s *Server) TokenURL() string { return s.OAuth.URL + "/token" }

// Endpoint is the fake FCM's base URL (--fcm-endpoint).
func (s *Server) Endpoint() string { return s.FCM.URL }

// Release ends every hanging request and makes later "hang" tokens answer
// 200 at once; connections held by StallAccept are closed.
func (s *Server) Release() {
	s.relOnce.Do(func() { close(s.release) })
	s.mu.Lock()
	held := s.held
	s.held, s.stallLeft = nil, 0
	s.mu.Unlock()
	for _, c := range held {
		_ = c.Close()
	}
}

// StallTokens makes the token endpoint stall the next n connections
// (StallAccept) or requests (StallAnswer, StallBody) as mode says, until
// the client gives up or Release; later ones are answered as usual. It
// stands in for a token endpoint that accepts and never answers.
func (s *Server) StallTokens(n int, mode TokenStall) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall, s.stallLeft = mode, n
}

// Stalled counts the connections or requests stalled so far.
func (s *Server) Stalled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalled
}

// takeStall reports whether this connection (accept) or request should
// stall as mode, and counts it.
func (s *Server) takeStall(mode TokenStall) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stall != mode || s.stallLeft == 0 {
		return false
	}
	s.stallLeft--
	s.stalled++
	return true
}

// stallListener holds the connections StallAccept stalls: accepted by the
// kernel, never handed to the HTTP server, so never read.
type stallListener struct {
	net.Listener
	s *Server
}

func (l stallListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || !l.s.takeStall(StallAccept) {
			return c, err
		}
		l.s.mu.Lock()
		l.s.held = append(l.s.held, c)
		l.s.mu.Unlock()
	}
}

// CredentialsJSON is a service-account key file for key (nil: s.Key).
func (s *Server) CredentialsJSON(key *rsa.PrivateKey) []byte {
	if key == nil {
		key = s.Key
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	b, _ := json.MarshalIndent(map[string]string{
		"type": "service_account", "project_id": s.Project, "private_key_id": s.KeyID,
		"private_key": string(pemKey), "client_email": s.Email, "client_id": "1234567890",
		"auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": s.TokenURL(),
	}, "", "  ")
	return b
}

// WriteCredentials writes CredentialsJSON(key) to
// dir/fcm-service-account.json with mode 0600 and returns its path.
func (s *Server) WriteCredentials(t testing.TB, dir string, key *rsa.PrivateKey) string {
	t.Helper()
	p, err := s.WriteCredentialsFile(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteCredentialsFile is WriteCredentials outside a test.
func (s *Server) WriteCredentialsFile(dir string, key *rsa.PrivateKey) (string, error) {
	p := filepath.Join(dir, "fcm-service-account.json")
	if err := os.WriteFile(p, s.CredentialsJSON(key), 0o600); err != nil {
		return "", err
	}
	return p, os.Chmod(p, 0o600)
}

// Requests returns the FCM requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// TokenRequests counts token-endpoint requests; Rejected lists why each
// refused assertion was refused.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenRequests
}

// Rejected lists the reasons the token endpoint refused assertions.
func (s *Server) Rejected() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokenRejected...)
}

// InFlight is the FCM requests being answered now.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokenRequests++
	s.mu.Unlock()
	switch {
	case s.takeStall(StallAnswer):
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		return
	case s.takeStall(StallBody):
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"access_token":"ya29.stalled-`))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-s.release:
		}
		return
	}
	if why := s.checkAssertion(r); why != "" {
		s.mu.Lock()
		s.tokenRejected = append(s.tokenRejected, why)
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`))
		return
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	tok := "ya29.fake-" + base64.RawURLEncoding.EncodeToString(rnd[:])
	s.mu.Lock()
	s.issued[tok] = true
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "expires_in": s.ExpiresIn, "token_type": "Bearer"})
}

// checkAssertion verifies a JWT-bearer grant: RS256 signature by Trusted,
// and the claims Google checks (iss, scope, aud, iat/exp).
func (s *Server) checkAssertion(r *http.Request) string {
	if r.Method != http.MethodPost || r.URL.Path != "/token" {
		return "not POST /token"
	}
	if err := r.ParseForm(); err != nil {
		return "bad form"
	}
	if g := r.PostForm.Get("grant_type"); g != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		return "grant_type " + g
	}
	parts := strings.Split(r.PostForm.Get("assertion"), ".")
	if len(parts) != 3 {
		return "assertion is not a JWS"
	}
	var hdr struct{ Alg, Typ, Kid string }
	var claims struct {
		Iss, Scope, Aud string
		Iat, Exp        int64
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil || json.Unmarshal(hb, &hdr) != nil || json.Unmarshal(cb, &claims) != nil {
		return "assertion does not decode"
	}
	if hdr.Alg != "RS256" || hdr.Kid != s.KeyID {
		return fmt.Sprintf("header alg %q kid %q", hdr.Alg, hdr.Kid)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(s.Trusted, crypto.SHA256, digest[:], sig); err != nil {
		return "bad signature"
	}
	now := time.Now().Unix()
	switch {
	case claims.Iss != s.Email:
		return "iss " + claims.Iss
	case claims.Scope != Scope:
		return "scope " + claims.Scope
	case claims.Aud != s.TokenURL():
		return "aud " + claims.Aud
	case claims.Iat > now+60 || claims.Exp < now || claims.Exp-claims.Iat > 3600:
		return "iat/exp out of range"
	}
	return ""
}

func (s *Server) serveFCM(w http.ResponseWriter, r *http.Request) {
	req, problem := s.checkSend(r)
	req.Problem = problem
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.inFlight++
	s.mu.Unlock()
	if s.Notify != nil {
		s.Notify(req)
	}
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/json")
	if strings.HasPrefix(problem, "path ") {
		w.WriteHeader(http.StatusNotFound) // another project: FCM's plain 404, no FcmError
		_, _ = w.Write([]byte(`{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}`))
		return
	}
	if problem != "" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"code":400,"message":"bad request shape","status":"INVALID_ARGUMENT"}}`))
		return
	}
	if strings.HasPrefix(req.DeviceToken, TokenRevoke) {
		s.mu.Lock()
		delete(s.issued, req.Bearer)
		s.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":{"code":401,"status":"UNAUTHENTICATED"}}`))
		return
	}
	Answer(w, r, req.DeviceToken, s.release)
}

// Answer writes the fake FCM's answer for a well-formed request for token
// (see the Token* prefixes). release ends a hang.
func Answer(w http.ResponseWriter, r *http.Request, token string, release <-chan struct{}) {
	retry := strconv.Itoa(int(RetryAfter / time.Second))
	switch {
	case strings.HasPrefix(token, TokenUnregistered):
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}`))
	case strings.HasPrefix(token, TokenInvalid):
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}`))
	case strings.HasPrefix(token, TokenRateLimited):
		w.Header().Set("Retry-After", retry)
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = w.Write([]byte(`{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"QUOTA_EXCEEDED"}]}}`))
	case strings.HasPrefix(token, TokenUnavailable):
		w.Header().Set("Retry-After", retry)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"code":503,"status":"UNAVAILABLE"}}`))
	case strings.HasPrefix(token, TokenServerError):
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"error":{"code":500,"status":"INTERNAL"}}`))
	case strings.HasPrefix(token, TokenHang):
		select {
		case <-r.Context().Done():
			return
		case <-release:
		}
		fallthrough
	default:
		_, _ = w.Write([]byte(`{"name":"projects/p/messages/0:1500415314455276%31bd1c9631bd1c96"}`))
	}
}

// checkSend checks one FCM request against the one shape a wake may have.
func (s *Server) checkSend(r *http.Request) (Request, string) {
	var req Request
	auth := r.Header.Get("Authorization")
	req.Bearer = strings.TrimPrefix(auth, "Bearer ")
	var body bytes.Buffer
	_, _ = body.ReadFrom(http.MaxBytesReader(nil, r.Body, 64<<10))
	var top map[string]json.RawMessage
	var msg map[string]json.RawMessage
	if json.Unmarshal(body.Bytes(), &top) == nil {
		_ = json.Unmarshal(top["message"], &msg)
		_ = json.Unmarshal(msg["token"], &req.DeviceToken)
	}
	s.mu.Lock()
	issued := s.issued[req.Bearer]
	s.mu.Unlock()
	switch {
	case r.Method != http.MethodPost:
		return req, "method " + r.Method
	case r.URL.Path != "/v1/projects/"+s.Project+"/messages:send" || r.URL.RawQuery != "":
		return req, "path " + r.URL.RequestURI()
	case !strings.HasPrefix(auth, "Bearer ") || !issued:
		return req, "no bearer token this token endpoint issued"
	case r.Header.Get("Content-Type") != "application/json":
		return req, "content type " + r.Header.Get("Content-Type")
	case len(top) != 1 || msg == nil:
		return req, "body is not exactly {\"message\":{...}}"
	case len(msg) != 3 || req.DeviceToken == "":
		return req, fmt.Sprintf("message has %d keys, want token, data, android", len(msg))
	case !jsonEqual(msg["data"], `{"kind":"wake"}`):
		return req, "data " + string(msg["data"])
	case !jsonEqual(msg["android"], `{"priority":"HIGH"}`):
		return req, "android " + string(msg["android"])
	}
	return req, ""
}

func jsonEqual(raw json.RawMessage, want string) bool {
	var a, b any
	if json.Unmarshal(raw, &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	ab, _ := json.Marshal(a)
	bb, _ := json.Marshal(b)
	return bytes.Equal(ab, bb)
}

// WaitRequests polls until n FCM requests arrived or d passed.
func (s *Server) WaitRequests(ctx context.Context, n int, d time.Duration) []Request {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if r := s.Requests(); len(r) >= n {
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s.Requests()
}
