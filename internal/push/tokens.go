package push

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// errNoAccessToken: the token endpoint did not give an access token. The
// oauth2 error text quotes the endpoint's answer, so it is never passed on.
var errNoAccessToken = errors.New("push: no access token")

// tokenCache hands out the cached OAuth2 access token and refreshes it
// through one fetch at a time. It stands in for golang.org/x/oauth2's
// ReuseTokenSource, which holds its lock for the whole refresh without a
// context (with a slow token endpoint every send would queue on it past its
// own deadline) and cannot forget a token FCM refused. Here waiters share
// the one running fetch and give up at their own deadline; the fetch itself
// is bounded by the transport (tokenTransport).
type tokenCache struct {
	src oauth2.TokenSource
	wg  *sync.WaitGroup // the Sender's: shutdown waits for a running fetch

	mu       sync.Mutex
	tok      *oauth2.Token
	fetching chan struct{} // non-nil while a fetch runs; closed when it ends
}

func (c *tokenCache) get(ctx context.Context) (*oauth2.Token, error) {
	c.mu.Lock()
	if c.tok.Valid() { // Valid treats a token within 10 s of expiry as expired
		t := c.tok
		c.mu.Unlock()
		return t, nil
	}
	if c.fetching == nil {
		c.fetching = make(chan struct{})
		c.wg.Add(1)
		go c.fetch(c.fetching)
	}
	done := c.fetching
	c.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.mu.Lock()
	t := c.tok
	c.mu.Unlock()
	// A token just fetched is used even inside Valid's 10 s margin (a
	// short-lived token would otherwise never be good enough); only an
	// expired or missing one fails.
	if t == nil || t.AccessToken == "" || (!t.Expiry.IsZero() && !time.Now().Before(t.Expiry)) {
		return nil, errNoAccessToken
	}
	return t, nil
}

func (c *tokenCache) fetch(done chan struct{}) {
	defer c.wg.Done()
	t, err := c.src.Token()
	c.mu.Lock()
	if err == nil {
		c.tok = t
	}
	c.fetching = nil
	c.mu.Unlock()
	close(done)
}

// invalidate forgets a token FCM refused (401), so the next wake fetches
// a new one instead of failing until expiry.
func (c *tokenCache) invalidate(t *oauth2.Token) {
	c.mu.Lock()
	if c.tok == t {
		c.tok = nil
	}
	c.mu.Unlock()
}

// tokenFunc adapts a function to oauth2.TokenSource.
type tokenFunc func() (*oauth2.Token, error)

func (f tokenFunc) Token() (*oauth2.Token, error) { return f() }

// tokenTransport bounds each token-endpoint request by timeout and ends it
// when ctx (the Sender's life) ends. oauth2's JWT source takes its client
// from a context and sends without one, so the bound lives here.
type tokenTransport struct {
	ctx     context.Context
	timeout time.Duration
	rt      http.RoundTripper
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.timeout)
	resp, err := t.rt.RoundTrip(r.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
