package cluster

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPermits_Wildcards(t *testing.T) {
	for _, c := range []struct {
		allow, deny []string
		subj        string
		want        bool
	}{
		{nil, nil, "relay.owner.a", true},
		{[]string{"relay.owner.a"}, nil, "relay.owner.a", true},
		{[]string{"relay.owner.b"}, nil, "relay.owner.a", false},
		{[]string{"relay.i.*.*.a"}, nil, "relay.i.x.m.a", true},
		{[]string{"relay.i.*.*.b"}, nil, "relay.i.x.m.a", false},
		{[]string{"relay.>"}, nil, "relay.i.x.m.a", true},
		{[]string{"relay.>"}, nil, "relay", false},
		{[]string{"relay.i.a.>"}, nil, "relay.i.a.m.*", true},
		{[]string{"relay.i.a.m.b"}, nil, "relay.i.a.m.*", false}, // a wildcard subscription needs a covering allow
		{[]string{"relay.i.*.m.*"}, nil, "relay.i.a.>", false},
		{[]string{"relay.owner.*"}, nil, "relay.owner.*", true},
		{nil, []string{"relay.owner.a"}, "relay.owner.a", false},
		{nil, []string{"relay.owner.*"}, "relay.owner.a", false},
		{nil, []string{"relay.i.a.m.b"}, "relay.i.a.m.*", false}, // part of the subscription denied
		{nil, []string{"relay.i.b.>"}, "relay.i.a.m.*", true},
	} {
		p := permission{Allow: c.allow, Deny: c.deny}
		require.Equal(t, c.want, permits(p, c.subj), "allow %v deny %v subject %s", c.allow, c.deny, c.subj)
	}
}
