package loadbench

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// Parts of a server's instructions, by what the code is: the relay's JSON
// scan, the relay's (or the forwarder's) own code, the WebSocket library,
// memory copies, the Go runtime's scheduling, channels, timers and
// allocator, and the net and system-call wrappers. Made from a callgrind
// dump's self costs (each instruction counted in the function it belongs
// to), so the parts add up to the dump's total.
var partOrder = []string{"scan", "own code", "websocket library", "copies", "runtime", "net and syscalls", "other"}

// partOf is the part a function belongs to.
func partOf(fn string) string {
	const relayPkg = "github.com/pyrycode/relay/internal/relay."
	switch {
	case strings.HasPrefix(fn, relayPkg):
		name := strings.TrimPrefix(fn, relayPkg)
		for _, p := range []string{"skip", "jsonValid", "validJSONObject", "validPhoneFrame", "memberIter", "(*memberIter)", "newMemberIter",
			"scanBinaryEnvelope", "envelopeKey", "jsonUnquote", "special", "plain", "parseCloseCode", "nonEmptyString", "isNull"} {
			if strings.HasPrefix(name, p) {
				return "scan"
			}
		}
		return "own code"
	case strings.HasPrefix(fn, "github.com/pyrycode/relay/"):
		return "own code"
	case strings.HasPrefix(fn, "github.com/coder/websocket"):
		return "websocket library"
	case strings.HasPrefix(fn, "runtime.memmove"), strings.HasPrefix(fn, "runtime.memclr"):
		return "copies"
	case strings.HasPrefix(fn, "internal/poll."), strings.HasPrefix(fn, "net."), strings.HasPrefix(fn, "syscall."),
		strings.HasPrefix(fn, "internal/runtime/syscall"), strings.HasPrefix(fn, "os."), strings.HasPrefix(fn, "bufio."), strings.HasPrefix(fn, "io."):
		return "net and syscalls"
	case strings.HasPrefix(fn, "runtime."), strings.HasPrefix(fn, "sync."), strings.HasPrefix(fn, "internal/sync."),
		strings.HasPrefix(fn, "context."), strings.HasPrefix(fn, "time."), strings.HasPrefix(fn, "internal/runtime/"):
		return "runtime"
	}
	return "other"
}

// dumpParts sums a callgrind dump's self costs by part.
func dumpParts(path string) (map[string]int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names := map[string]string{} // compressed id "(12)" -> name
	name := func(v string) string {
		v = strings.TrimSpace(v)
		if strings.HasPrefix(v, "(") {
			if end := strings.IndexByte(v, ')'); end > 0 {
				id, rest := v[:end+1], strings.TrimSpace(v[end+1:])
				if rest != "" {
					names[id] = rest
					return rest
				}
				return names[id]
			}
		}
		return v
	}
	parts := map[string]int64{}
	cur, afterCalls := "", false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "fn="):
			cur = name(line[3:])
		case strings.HasPrefix(line, "cfn="):
			name(line[4:])
		case strings.HasPrefix(line, "calls="):
			afterCalls = true
		case line != "" && (line[0] >= '0' && line[0] <= '9' || line[0] == '+' || line[0] == '-' || line[0] == '*'):
			if afterCalls { // the call's inclusive cost: the callee's, not cur's
				afterCalls = false
				continue
			}
			fs := strings.Fields(line)
			if len(fs) < 2 {
				continue
			}
			n, err := strconv.ParseInt(fs[len(fs)-1], 10, 64)
			if err == nil {
				parts[partOf(cur)] += n
			}
		}
	}
	return parts, sc.Err()
}
