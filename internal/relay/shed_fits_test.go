package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// At the relay-wide ceiling, shedding goes on until the crossing frame
// fits: when every staller holds less than the frame needs, one shed frees
// too little, and the bystander whose frame crossed must still keep its
// frame and its connection while stallers remain. Six stallers each hold
// one 6 KB frame mid-write; the bystander's 28 KB frame needs five of them
// shed. Exactly as many are shed as the frame needs (not all six), each
// closed 1011 with a notice to its binary, and the budget is never passed.
// Shedding once (or any fixed number of times short of five), or shedding
// only a phone whose backlog alone would fit the frame, closes the
// bystander here instead.
func TestRelayWideShedding_EachShedFreesTooLittle_ShedsUntilTheFrameFits(t *testing.T) {
	const (
		frameBytes    = 6000
		stalledPhones = 6
		slack         = 1000
		victimBytes   = 28 << 10
	)
	cost := int64(frameBytes + itemOverhead)
	ceiling := stalledPhones*cost + slack
	h := newHarness(t, func(o *Options) {
		o.MaxMessageBytes = 32 << 10
		o.PhoneQueueBytes = o.MaxMessageBytes + itemOverhead
		o.MaxQueuedBytes = ceiling
		o.WriteTimeout = time.Hour
	})
	attacker := h.dialBinary("attacker")
	var stalled []string
	for range stalledPhones {
		stalled = append(stalled, h.dialStalledPhone("attacker", attacker))
	}
	for _, id := range stalled {
		h.stuckInFlight(attacker, id, frameBytes)
	}
	require.Equal(t, stalledPhones*cost, h.rl.QueuedBytes(), "each stalled phone holds one frame in flight")

	victimBin := h.dialBinary("victim")
	victim, victimID := h.dialPhone("victim", victimBin)
	frame := fmt.Sprintf(`{"pad":%q}`, strings.Repeat("v", victimBytes-10))
	need := (int64(len(frame)) + itemOverhead - slack + cost - 1) / cost // sheds the frame needs
	require.Greater(t, need, int64(1), "one shed would be enough: the test proves nothing")
	require.Less(t, need, int64(stalledPhones), "every staller must go: the test cannot tell too many sheds")

	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":%s}`, victimID, frame))
	require.Contains(t, victim.next(), `"pad":"vvvv`, "the bystander's frame must be delivered")
	shed := map[string]int{}
	for range need {
		env := attacker.envelope()
		require.Contains(t, stalled, env.ConnID, "only attacker phones are shed")
		shed[env.ConnID] = env.CloseCode
	}
	require.Len(t, shed, int(need))
	for id, code := range shed {
		require.Equal(t, 1011, code, "phone %s", id)
	}
	attacker.silent(300 * time.Millisecond) // no more sheds than the frame needed
	require.Equal(t, float64(need), dropCount(h, DropRelayBacklog))
	require.Zero(t, dropCount(h, DropPhoneBacklog))
	victimBin.silent(100 * time.Millisecond) // no close notice for the bystander
	require.LessOrEqual(t, h.rl.QueuedBytes(), ceiling)

	// The bystander is still connected and still served.
	victimBin.send(fmt.Sprintf(`{"conn_id":%q,"frame":{"after":1}}`, victimID))
	require.Contains(t, victim.next(), `"after":1`)
}
