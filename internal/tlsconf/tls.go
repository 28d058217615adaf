// Package tlsconf is the relay's TLS configuration, kept apart from the
// routing core (internal/relay never imports ACME): the TLS policy shared by
// the static-certificate and autocert modes, the autocert manager, the
// pre-flight check of its certificate cache, and the port-80 ACME HTTP-01
// challenge handler.
package tlsconf

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/pyrycode/relay/internal/fileowner"
)

// ErrCacheDirInsecure is wrapped by every CheckCacheDir refusal that is about
// who can read or swap the cache: the directory, or an entry in it, grants a
// group or world permission bit, is a symlink, or is owned by another uid
// than the process's effective uid. The cache holds the ACME account key and
// the certificate private keys, so the relay refuses to start rather than
// serve with keys others may read or plant. The message names the path, the
// offending mode or owner and the fix; nothing is ever chmod-ed for you.
var ErrCacheDirInsecure = errors.New("tlsconf: certificate cache directory is insecure")

// ErrCacheDirNotDir is returned (wrapped, with the path) by CheckCacheDir
// when the cache path exists but is not a directory. It is a configuration
// mistake rather than an exposure, hence its own sentinel.
var ErrCacheDirNotDir = errors.New("tlsconf: certificate cache path is not a directory")

// ErrKeyFileInsecure is returned (wrapped, with the path and mode) by
// StaticTLSConfig when the private key file is readable, writable or
// executable by "other" users. Group bits are allowed: see StaticTLSConfig.
var ErrKeyFileInsecure = errors.New("tlsconf: TLS private key file is insecure")

// ErrInvalidDomain is returned (wrapped) by NewAutocertManager when
// AutocertOptions.Domain is not a dotted DNS host name. ACME CAs only issue
// for such names, and autocert refuses undotted SNI names anyway.
var ErrInvalidDomain = errors.New("tlsconf: invalid autocert domain")

// ErrInvalidDirectoryURL is returned (wrapped) by NewAutocertManager when
// AutocertOptions.DirectoryURL is set but is not an absolute https URL: an
// ACME directory fetched over plain HTTP could be swapped on the path.
var ErrInvalidDirectoryURL = errors.New("tlsconf: invalid ACME directory URL")

// groupWorldBits are the permission bits that must be clear on the cache
// directory and everything in it.
const groupWorldBits = fileowner.GroupWorld

// CheckCacheDir verifies, before any port is bound, that dir is safe to use
// as the autocert certificate cache, creating it when it is missing.
//
// The contract:
//   - missing: dir (and any missing parents) is created with mode 0700, then
//     checked like an existing one (umask can only narrow 0700);
//   - dir itself is a symlink: refused with ErrCacheDirInsecure. Whoever can
//     write the link's parent can repoint it at a directory they read.
//     Point the flag at the resolved path instead. Symlinks in the parents
//     are followed (e.g. /var -> /private/var) and not checked;
//   - dir exists but is not a directory: refused with ErrCacheDirNotDir;
//   - dir has any group or world permission bit (0750, 0755, 0770, ...):
//     refused with ErrCacheDirInsecure, naming path, mode and the chmod fix;
//   - dir is owned by another uid than the process's effective uid:
//     refused with ErrCacheDirInsecure (its owner could read or plant keys);
//   - any entry directly inside dir (autocert.DirCache is flat: the account
//     key, domain key+cert files, challenge tokens) that is a symlink, has a
//     group or world bit, or is owned by another uid: refused with
//     ErrCacheDirInsecure naming the entry.
//
// CheckCacheDir never changes the mode or owner of anything: silently fixing
// permissions would hide that the keys may already have been read.
func CheckCacheDir(dir string) error {
	if dir == "" {
		return fmt.Errorf("%w: empty path", ErrCacheDirNotDir)
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("tlsconf: create certificate cache directory: %w", err)
		}
		// Re-check what is there now rather than trusting MkdirAll: the
		// path may have been swapped in between, or umask may differ.
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("tlsconf: certificate cache directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink; point the cache flag at the real directory", ErrCacheDirInsecure, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: %s", ErrCacheDirNotDir, dir)
	}
	if perm := fi.Mode().Perm(); perm&groupWorldBits != 0 {
		return fmt.Errorf("%w: %s has mode %#o; want 0700 (chmod 700 %s)", ErrCacheDirInsecure, dir, perm, dir)
	}
	if err := checkOwner(dir, fi); err != nil {
		return err
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("tlsconf: read certificate cache directory: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		efi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("tlsconf: certificate cache entry: %w", err)
		}
		if efi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %s is a symlink; the cache must hold only regular files", ErrCacheDirInsecure, p)
		}
		if perm := efi.Mode().Perm(); perm&groupWorldBits != 0 {
			return fmt.Errorf("%w: %s has mode %#o; want 0600 (chmod 600 %s)", ErrCacheDirInsecure, p, perm, p)
		}
		if err := checkOwner(p, efi); err != nil {
			return err
		}
	}
	return nil
}

// checkOwner refuses a cache path owned by another uid than the process's
// effective uid: that uid could read or replace the keys whatever the mode.
func checkOwner(path string, fi fs.FileInfo) error {
	if owner, euid, foreign := fileowner.Foreign(fi); foreign {
		return fmt.Errorf("%w: %s is owned by uid %d, not the relay's uid %d", ErrCacheDirInsecure, path, owner, euid)
	}
	return nil
}

// ServerTLSConfig returns a new copy of the one TLS policy both the static
// certificate mode and the autocert mode serve with. Callers add the
// certificate source (Certificates or GetCertificate).
//
//   - TLS 1.2 is the floor: TLS 1.0/1.1 lack AEAD suites and rely on
//     SHA-1/MD5 in the handshake (RFC 8996 deprecates them).
//   - TLS 1.2 suites are forward-secret AEAD only: ECDHE key exchange (no
//     static RSA key exchange, whose recorded traffic a later key compromise
//     decrypts) with AES-GCM or ChaCha20-Poly1305 (no CBC: MAC-then-encrypt
//     padding oracles of the LUCKY13 class; no RC4/3DES). TLS 1.3 suites are
//     all AEAD and not configurable in Go.
//   - Key exchange: the X25519MLKEM768 post-quantum hybrid (TLS 1.3 only,
//     so recorded sessions resist a future quantum attacker), then X25519
//     and P-256 for clients without it. Pinned rather than following Go's
//     default so the policy is reviewable in one place.
//   - ALPN is "http/1.1" only: the relay speaks WebSockets over HTTP/1.1;
//     RFC 8441 WebSockets over h2 is not used, so h2 would only add attack
//     surface. An http.Server serving this config with ServeTLS must set
//     Protocols to HTTP/1 only (or TLSNextProto to an empty map): otherwise
//     ServeTLS appends "h2" and an h2-only client negotiates it.
func ServerTLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		CurvePreferences: []tls.CurveID{
			tls.X25519MLKEM768,
			tls.X25519,
			tls.CurveP256,
		},
		NextProtos: []string{"http/1.1"},
	}
}

// StaticTLSConfig loads the certificate chain and private key from PEM files
// (LoadKeyPair) and returns ServerTLSConfig serving them.
//
// The key file is refused (ErrKeyFileInsecure) when any "other" permission
// bit is set. Group bits are allowed on purpose: Debian's ssl-cert group
// convention (0640 root:ssl-cert) and Kubernetes fsGroup mounts grant the
// key to the relay through its group. Symlinks are followed (Kubernetes
// secret volumes are symlinks) and the target's mode is checked. To rotate
// the pair without a restart, serve a StaticCert and Reload it.
func StaticTLSConfig(certFile, keyFile string) (*tls.Config, error) {
	cert, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := ServerTLSConfig()
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, nil
}

// AutocertOptions configures NewAutocertManager.
type AutocertOptions struct {
	// Domain is the only host name a certificate is requested for
	// (HostWhitelist). Any other SNI name fails the handshake without
	// contacting the CA, so a scanner cannot burn the CA's rate limit by
	// sending made-up names. Required; must be a dotted DNS name.
	Domain string

	// CacheDir holds the ACME account key and the certificates with their
	// private keys. It is checked with CheckCacheDir (created 0700 when
	// missing; refused when group/world accessible). Without a persistent
	// cache every restart would re-issue and soon hit CA rate limits.
	// Required.
	CacheDir string

	// Email is the optional ACME account contact for expiry and incident
	// notices. It is sent to the CA only.
	Email string

	// DirectoryURL is the ACME directory; empty means Let's Encrypt
	// production (acme.LetsEncryptURL). Set it for staging or a test CA such
	// as Pebble. Must be https.
	DirectoryURL string

	// HTTPClient is used for all requests to the CA. Nil means
	// http.DefaultClient with the system roots. Set it only to trust a test
	// CA's own TLS certificate (Pebble); trusting extra roots for the
	// production CA widens who can impersonate it.
	HTTPClient *http.Client

	// RenewBefore is how long before expiry renewal starts (autocert caps
	// it at 30 days). Zero means autocert's default: a third of the
	// certificate's lifetime, at most 30 days (30 days for Let's Encrypt's
	// 90-day certificates), which leaves room to notice and fix a failing
	// renewal.
	RenewBefore time.Duration
}

// NewAutocertManager validates opts, runs CheckCacheDir on opts.CacheDir
// (its ErrCacheDirInsecure / ErrCacheDirNotDir errors are returned wrapped)
// and returns a manager that accepts the CA's terms, requests certificates
// for opts.Domain only and caches them in opts.CacheDir.
func NewAutocertManager(opts AutocertOptions) (*autocert.Manager, error) {
	domain, err := checkAutocertNames(opts)
	if err != nil {
		return nil, err
	}
	if err := CheckCacheDir(opts.CacheDir); err != nil {
		return nil, err
	}
	m := &autocert.Manager{
		Prompt:      autocert.AcceptTOS,
		HostPolicy:  autocert.HostWhitelist(domain),
		Cache:       autocert.DirCache(opts.CacheDir),
		Email:       opts.Email,
		RenewBefore: opts.RenewBefore,
	}
	if opts.DirectoryURL != "" || opts.HTTPClient != nil {
		m.Client = &acme.Client{DirectoryURL: opts.DirectoryURL, HTTPClient: opts.HTTPClient}
	}
	return m, nil
}

// CheckAutocertOptions runs NewAutocertManager's checks without creating
// anything (relay serve --check): a missing cache directory is not an
// error, since the start creates it 0700.
func CheckAutocertOptions(opts AutocertOptions) error {
	if _, err := checkAutocertNames(opts); err != nil {
		return err
	}
	if _, err := os.Lstat(opts.CacheDir); opts.CacheDir != "" && errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return CheckCacheDir(opts.CacheDir)
}

// checkAutocertNames checks the domain and the directory URL and returns
// the canonical domain.
func checkAutocertNames(opts AutocertOptions) (string, error) {
	domain, err := canonicalDomain(opts.Domain)
	if err != nil {
		return "", err
	}
	if opts.DirectoryURL != "" {
		u, err := url.Parse(opts.DirectoryURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return "", fmt.Errorf("%w: want an absolute https URL", ErrInvalidDirectoryURL)
		}
	}
	return domain, nil
}

// canonicalDomain lower-cases name and checks it is a dotted LDH host name
// (RFC 1123 labels, at most 253 bytes, no trailing dot, not an IPv4 literal).
func canonicalDomain(name string) (string, error) {
	name = strings.ToLower(name)
	if name == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidDomain)
	}
	if len(name) > 253 || !strings.Contains(name, ".") {
		return "", fmt.Errorf("%w: %q is not a dotted host name", ErrInvalidDomain, name)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if !validLabel(l) {
			return "", fmt.Errorf("%w: %q is not a dotted host name", ErrInvalidDomain, name)
		}
	}
	// A numeric last label means an IP literal (or nonsense): ACME issues
	// IP certificates only through a different identifier type.
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", fmt.Errorf("%w: %q is an IP address", ErrInvalidDomain, name)
	}
	return name, nil
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// AutocertTLSConfig returns ServerTLSConfig with certificates from m.
// "acme-tls/1" is offered next to "http/1.1" so the CA's TLS-ALPN-01
// validation handshake gets autocert's challenge certificate.
func AutocertTLSConfig(m *autocert.Manager) *tls.Config {
	cfg := ServerTLSConfig()
	cfg.GetCertificate = m.GetCertificate
	cfg.NextProtos = append(cfg.NextProtos, acme.ALPNProto)
	return cfg
}

// acmeChallengePrefix is the HTTP-01 path prefix (RFC 8555 §8.3).
const acmeChallengePrefix = "/.well-known/acme-challenge/"

// maxChallengeBody bounds what ChallengeHandler buffers from autocert. A
// key authorization is a token, a dot and a 43-byte thumbprint.
const maxChallengeBody = 4 << 10

// ChallengeHandler returns the port-80 handler for autocert mode. It
// answers GET/HEAD for a known HTTP-01 token with the key authorization and
// everything else with 404 and an empty body. autocert's own HTTPHandler
// redirects non-challenge requests to https (echoing the Host header) and
// answers a foreign Host or an unknown token with its error text (echoing
// the Host or naming cache internals); none of that reaches the client here.
// Calling ChallengeHandler enables HTTP-01 on m.
func ChallengeHandler(m *autocert.Manager) http.Handler {
	inner := m.HTTPHandler(http.HandlerFunc(notFound))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method != http.MethodGet && r.Method != http.MethodHead) ||
			!strings.HasPrefix(r.URL.Path, acmeChallengePrefix) {
			notFound(w, r)
			return
		}
		rec := &challengeRecorder{header: make(http.Header)}
		inner.ServeHTTP(rec, r)
		if rec.status != http.StatusOK || rec.overflow {
			notFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(rec.body.Bytes())
		}
	})
}

func notFound(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusNotFound)
}

// challengeRecorder buffers autocert's answer so only a successful token
// body is forwarded; its headers and error texts are dropped.
type challengeRecorder struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	overflow bool
}

func (c *challengeRecorder) Header() http.Header { return c.header }

func (c *challengeRecorder) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

func (c *challengeRecorder) Write(p []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	if c.body.Len()+len(p) > maxChallengeBody {
		c.overflow = true
		return 0, errors.New("tlsconf: challenge body too large")
	}
	return c.body.Write(p)
}
