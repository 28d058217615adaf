package config

import (
	"flag"
	"strings"

	"github.com/pyrycode/relay/internal/push"
)

// pushFlags registers the FCM push flags on fs, writing into o (which holds
// the defaults). They live apart from Parse's list so that the push
// feature's flags read as one block.
func pushFlags(fs *flag.FlagSet, o *push.Options) {
	fs.StringVar(&o.CredentialsFile, "fcm-credentials", o.CredentialsFile, "Google service-account JSON key for FCM push wakes (push is off when empty; the file must be 0600/0400 and owned by the relay's user)")
	fs.StringVar(&o.Project, "fcm-project", o.Project, "Firebase project id to send through (default: the key file's project_id)")
	fs.StringVar(&o.Endpoint, "fcm-endpoint", o.Endpoint, "FCM API base URL (https; http only to a loopback IP, for tests)")
	fs.IntVar(&o.MaxInFlight, "push-max-in-flight", o.MaxInFlight, "FCM requests in flight relay-wide; a wake beyond is dropped, never queued")
	fs.DurationVar(&o.Interval, "push-interval", o.Interval, "per-server-id wake rate: one wake per interval after the burst")
	fs.IntVar(&o.Burst, "push-burst", o.Burst, "wakes a server-id may send at once")
	fs.DurationVar(&o.RequestTimeout, "push-timeout", o.RequestTimeout, "deadline of one FCM call, access-token fetch included")
	fs.IntVar(&o.MaxServerIDs, "push-max-server-ids", o.MaxServerIDs, "server-ids whose wake bucket is tracked at once (bounds its memory)")
}

// validatePush renders push.Options' refusals as configuration errors.
func validatePush(o push.Options) error {
	if err := o.Validate(); err != nil {
		return &Error{Problem: oneLine(strings.TrimPrefix(err.Error(), push.ErrInvalidOptions.Error()+": "))}
	}
	return nil
}
