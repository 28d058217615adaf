package push

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/oauth2/google"
	"golang.org/x/oauth2/jwt"

	"github.com/pyrycode/relay/internal/fileowner"
)

// ErrCredentialsInsecure is wrapped by every refusal of the credentials
// file that is about who could read or swap it: not a regular file (a
// symlink, a directory, a device), a group or world permission bit, or
// another owner than the process's effective uid. The file holds a private
// key that can message every installation of the app, so the relay refuses
// to start (exit 2). The message names the path, the mode or owner and the
// fix, never the file's contents; nothing is chmod-ed for you.
var ErrCredentialsInsecure = errors.New("push: FCM credentials file is insecure")

// ErrCredentialsInvalid is wrapped when the credentials file cannot be used:
// unreadable, too large, not a service-account key, no project id, or a
// token_uri that is not https. The message names the file and the problem
// in fixed words, never a value from the file.
var ErrCredentialsInvalid = errors.New("push: FCM credentials file is unusable")

// fcmScope is the OAuth2 scope of the FCM HTTP v1 API.
const fcmScope = "https://www.googleapis.com/auth/firebase.messaging"

// maxCredentialsBytes caps the key file read: a service-account key is
// about 2.3 KiB.
const maxCredentialsBytes = 64 << 10

// CheckCredentials runs New's checks of the key file (owner, mode, symlinks,
// its contents) without building a sender: relay serve --check. Nil when
// push is off.
func CheckCredentials(o Options) error {
	if !o.Enabled() {
		return nil
	}
	_, err := loadCredentials(o.CredentialsFile, o.Project)
	return err
}

// credentials is a checked, parsed key file.
type credentials struct {
	jwt     *jwt.Config
	project string
}

// loadCredentials checks and parses the key file. The checks run on the
// opened file (Fstat), compared with the Lstat of the path, so a file
// swapped between the check and the read is refused too. A path that is a
// symlink is a Kubernetes secret mount (key -> ..data/key): it is followed
// by fileowner.Resolve, every directory on the way checked, and the file
// it reaches must pass fileowner.CheckLinked.
func loadCredentials(path, projectOverride string) (*credentials, error) {
	li, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCredentialsInvalid, path, pathErr(err))
	}
	real, check := path, checkCredentialsInfo
	if li.Mode()&fs.ModeSymlink != 0 {
		if real, err = fileowner.Resolve(path); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrCredentialsInsecure, path, ownerErr(err))
		}
		if li, err = os.Lstat(real); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrCredentialsInvalid, real, pathErr(err))
		}
		check = func(real string, fi fs.FileInfo) error { return checkLinkedInfo(path, real, fi) }
	}
	if err := check(real, li); err != nil {
		return nil, err
	}
	f, err := os.Open(real)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCredentialsInvalid, real, pathErr(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !os.SameFile(li, fi) {
		return nil, fmt.Errorf("%w: %s changed while being checked", ErrCredentialsInsecure, path)
	}
	if err := check(real, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialsBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: read failed", ErrCredentialsInvalid, path)
	}
	if len(data) > maxCredentialsBytes {
		return nil, fmt.Errorf("%w: %s is over %d bytes; want a service-account JSON key", ErrCredentialsInvalid, path, maxCredentialsBytes)
	}
	// The parser's errors may quote the file (its "type" field, say), so
	// only fixed words reach the message.
	cfg, err := google.JWTConfigFromJSON(data, fcmScope)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a Google service-account JSON key", ErrCredentialsInvalid, path)
	}
	if checkURL(cfg.TokenURL) != nil {
		return nil, fmt.Errorf("%w: %s: token_uri must be https (http only to a loopback IP)", ErrCredentialsInvalid, path)
	}
	var meta struct {
		ProjectID string `json:"project_id"`
	}
	_ = json.Unmarshal(data, &meta) // JWTConfigFromJSON parsed it already
	c := &credentials{jwt: cfg, project: meta.ProjectID}
	if projectOverride != "" {
		c.project = projectOverride
	}
	if c.project == "" {
		return nil, fmt.Errorf("%w: %s has no project_id; set --fcm-project", ErrCredentialsInvalid, path)
	}
	if !validProject(c.project) {
		return nil, fmt.Errorf("%w: %s: the project id is not a Firebase project id (lower-case letters, digits, '-')", ErrCredentialsInvalid, path)
	}
	return c, nil
}

// checkCredentialsInfo is the mode and owner policy.
func checkCredentialsInfo(path string, fi fs.FileInfo) error {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink; point --fcm-credentials at the real file", ErrCredentialsInsecure, path)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file", ErrCredentialsInsecure, path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %#o; want 0600 or 0400 (chmod 600 %s)", ErrCredentialsInsecure, path, perm, path)
	}
	return checkOwner(path, fi)
}

// checkLinkedInfo is the rule for the key real reached through the
// symlink path (a Kubernetes secret): fileowner.CheckLinked.
func checkLinkedInfo(path, real string, fi fs.FileInfo) error {
	if err := fileowner.CheckLinked(real, fi); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrCredentialsInsecure, path, ownerErr(err))
	}
	return nil
}

// ownerErr drops fileowner's prefix: the caller's sentinel says what the
// file is.
func ownerErr(err error) string {
	return strings.TrimPrefix(err.Error(), fileowner.ErrUnsafePath.Error()+": ")
}

// checkOwner refuses a file owned by another uid than the process's
// effective uid: its owner could read or replace the key whatever the mode.
func checkOwner(path string, fi fs.FileInfo) error {
	if owner, euid, foreign := fileowner.Foreign(fi); foreign {
		return fmt.Errorf("%w: %s is owned by uid %d, not the relay's uid %d", ErrCredentialsInsecure, path, owner, euid)
	}
	return nil
}

// pathErr drops the path from an *fs.PathError (the caller names it).
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// validProject: Google project ids are 6–30 of [a-z0-9-]; a little wider
// here (domain-scoped "example.com:proj" ids exist), but never a '/', '?'
// or '#' that would change the request path.
func validProject(p string) bool {
	if len(p) == 0 || len(p) > 100 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}
