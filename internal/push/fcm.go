package push

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"
)

// The FCM HTTP v1 request, one per wake:
//
//	POST {endpoint}/v1/projects/{project}/messages:send
//	Authorization: Bearer <OAuth2 access token>
//	Content-Type: application/json
//
//	{"message":{"token":"<device token>","data":{"kind":"wake"},"android":{"priority":"HIGH"}}}
//
// Data-only (no "notification"), so the app is woken in the background and
// shows nothing by itself; priority HIGH, so Android delivers it to an app
// in Doze at once. Only the token comes from the binary, and it is a JSON
// string: a binary cannot add a notification, a topic, or any field.
const (
	bodyPrefix = `{"message":{"token":`
	bodySuffix = `,"data":{"kind":"wake"},"android":{"priority":"HIGH"}}}`
)

// wakeBody builds the request body for token.
func wakeBody(token string) []byte {
	tok, _ := json.Marshal(token) // a string cannot fail
	b := make([]byte, 0, len(bodyPrefix)+len(tok)+len(bodySuffix))
	b = append(b, bodyPrefix...)
	b = append(b, tok...)
	return append(b, bodySuffix...)
}

// maxErrorBody caps what is read of an FCM answer: the error body is only
// searched for its errorCode, and FCM's are under 1 KiB.
const maxErrorBody = 16 << 10

// classify maps an FCM answer to an Outcome. The body is read (bounded)
// only to tell UNREGISTERED from another 404; it is never logged, since
// FCM error messages can quote the request.
func classify(resp *http.Response) Outcome {
	switch resp.StatusCode {
	case http.StatusOK:
		return OutcomeSent
	case http.StatusBadRequest:
		return OutcomeInvalidToken
	case http.StatusNotFound:
		if fcmErrorCode(resp.Body) == "UNREGISTERED" {
			return OutcomeUnregistered
		}
		return OutcomeFailed // a wrong project or path: not the token's fault
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return OutcomeRateLimited
	}
	return OutcomeFailed
}

// fcmErrorCode extracts error.details[].errorCode of a google.firebase.fcm.v1.FcmError.
func fcmErrorCode(body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, maxErrorBody))
	var e struct {
		Error struct {
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			} `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil {
		return ""
	}
	for _, d := range e.Error.Details {
		if d.Type == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			return d.ErrorCode
		}
	}
	return ""
}

// retryAfter reads Retry-After (delay-seconds or an HTTP date), capped at
// MaxRetryAfter; DefaultRetryAfter when absent or unreadable.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	d := DefaultRetryAfter
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil && secs >= 0 {
		d = time.Duration(min(secs, int64(MaxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	}
	return min(d, MaxRetryAfter)
}

// validWake reports whether a wake can be an FCM wake: platform "fcm" and
// a token of printable ASCII within MaxTokenBytes.
func validWake(platform, token string) bool {
	if platform != "fcm" || token == "" || len(token) > MaxTokenBytes {
		return false
	}
	return bytes.IndexFunc([]byte(token), func(r rune) bool { return r <= ' ' || r > '~' }) < 0
}
