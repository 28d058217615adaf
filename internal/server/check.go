package server

import (
	"errors"

	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/push"
	"github.com/pyrycode/relay/internal/tlsconf"
)

// Check runs the validations New runs on files (the TLS pair; the autocert
// domain, directory URL and certificate cache; the ACME CA; the FCM key)
// without binding, connecting or creating anything: relay serve --check.
// config.Parse has checked the flags and the cluster's files; NATS is not
// contacted (its refusals need a connection, and a NATS outage must not
// fail a reload). Errors name the flag and its RELAY_* variable.
func Check(cfg config.Config) error {
	switch cfg.Mode {
	case config.ModeStatic:
		if _, err := tlsconf.LoadKeyPair(cfg.TLSCert, cfg.TLSKey); err != nil {
			return nameStatic(cfg, err)
		}
	case config.ModeAutocert:
		if err := tlsconf.CheckAutocertOptions(autocertOptions(cfg)); err != nil {
			return nameAutocert(cfg, err)
		}
		if cfg.ACMECA != "" {
			if _, err := clientTrusting(cfg.ACMECA); err != nil {
				return cfg.NameFile(err, "acme-ca")
			}
		}
	}
	return cfg.NameFile(push.CheckCredentials(cfg.Push), "fcm-credentials")
}

func autocertOptions(cfg config.Config) tlsconf.AutocertOptions {
	return tlsconf.AutocertOptions{
		Domain:       cfg.Domain,
		CacheDir:     cfg.CertCache,
		Email:        cfg.ACMEEmail,
		DirectoryURL: cfg.ACMEDirectory,
	}
}

// nameStatic names the flag of the static pair a refusal is about: the
// key, the certificate, or both (swapped files, a pair that does not match).
func nameStatic(cfg config.Config, err error) error {
	switch {
	case errors.Is(err, tlsconf.ErrKeyFile), errors.Is(err, tlsconf.ErrKeyFileInsecure):
		return cfg.NameFile(err, "tls-key")
	case errors.Is(err, tlsconf.ErrCertFile):
		return cfg.NameFile(err, "tls-cert")
	}
	return cfg.NameFile(err, "tls-cert", "tls-key")
}

// nameAutocert names --cert-cache for a cache refusal; a domain or
// directory URL refusal already says which.
func nameAutocert(cfg config.Config, err error) error {
	if errors.Is(err, tlsconf.ErrInvalidDomain) || errors.Is(err, tlsconf.ErrInvalidDirectoryURL) {
		return err
	}
	return cfg.NameFile(err, "cert-cache")
}
