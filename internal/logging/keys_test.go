package logging

import (
	"bufio"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestSourceLogKeysAllowlisted walks the whole module and fails on any log
// key that is off the allowlist or not a constant. It guards code other
// packages add later, so a new key has to be argued for in keys.go.
func TestSourceLogKeysAllowlisted(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root, modPath, err := findModuleRoot(wd)
	if err != nil {
		t.Fatal(err)
	}
	w, err := checkModuleDir(root, modPath)
	if err != nil {
		t.Fatal(err)
	}
	// Non-vacuous: at least this package's own files and call sites were seen.
	if len(w.files) == 0 || w.sites == 0 {
		t.Fatalf("walker saw %d files and %d slog call sites under %s; detection is broken", len(w.files), w.sites, root)
	}
	t.Logf("checked %d files, %d slog call sites", len(w.files), w.sites)
	for _, f := range w.findings {
		t.Errorf("%s", f)
	}
}

// badLines returns the 1-based line numbers that carry a "// BAD" marker.
func badLines(src string) []int {
	var lines []int
	sc := bufio.NewScanner(strings.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		if strings.Contains(sc.Text(), "// BAD") {
			lines = append(lines, n)
		}
	}
	return lines
}

const walkLoggingSrc = `package logging

import "log/slog"

const KeyConnID = "conn_id"
const KeyCount = "count"

// Err is a helper that returns an Attr; calls to it are attrs, not keys.
func Err(err error) slog.Attr { return slog.Any(KeyError, err) }

const KeyError = "error"

func own() slog.Attr { return slog.Int("dropped_attrs", 1) } // reserved keys are fine here
`

const walkAppSrc = `package app

import (
	"context"
	"log/slog"
	"net/http"
	"sync"

	"example.com/m/internal/logging"
)

const keyGood = "event"
const keyBad = "password"
const keyJoined = "server" + "_id"

type conn struct{ id string }

func (c *conn) attrs(ev string) []any { return []any{"event", ev, "conn_id", c.id} }

func badAttrs() []any {
	return []any{"auth", 1} // BAD
}

func notHelper() []any { x := []any{}; return x }

func f(ctx context.Context, l *slog.Logger, w http.ResponseWriter, wg *sync.WaitGroup, dyn string, err error, args []any, c *conn) {
	l.Info("helper", c.attrs("x")...)
	l.Info("helper+", append(c.attrs("x"), "close_code", 1)...)
	l.Info("helper+bad", append(c.attrs("x"), "headers", 1)...) // BAD
	l.Info("lit", []any{"count", 1}...)
	l.Info("not helper", notHelper()...) // BAD
	l.Info("bad helper", badAttrs()...)
	l.Info("ok", "event", "x", logging.KeyConnID, "c", keyGood, 1, keyJoined, "s")
	l.Info("bad literal", "token", "x") // BAD
	l.Warn("bad const", keyBad, 1) // BAD
	l.Error("dynamic", dyn, 1) // BAD
	slog.Info("attr", slog.String("payload", "x")) // BAD
	slog.Info("ok attr", slog.Int(logging.KeyCount, 1), "reason", "r", logging.Err(err))
	_ = slog.Attr{Key: "header", Value: slog.StringValue("x")} // BAD
	_ = slog.Attr{"cookie", slog.StringValue("x")} // BAD
	l.With("user", 1).Info("x") // BAD
	l.LogAttrs(ctx, slog.LevelInfo, "m", slog.Any("body", nil)) // BAD
	l.Log(ctx, slog.LevelInfo, "m", "msg", "forged") // BAD
	l.InfoContext(ctx, "m", slog.TimeKey, "forged") // BAD
	_ = l.WithGroup("g") // BAD
	l.Info("err as key", err) // BAD
	l.Info("spread", args...) // BAD
	slog.Info("group", slog.Group("req", "path", "/x")) // BAD
	slog.Info("inline group", slog.Group("", "event", "e"))
	l.Info("inline group bad", slog.Group("", "ip", "e")) // BAD
	http.Error(w, "not found", 404)
	wg.Add(1)
	_ = err.Error()
}
`

const walkAliasSrc = `package app

import lg "log/slog"

func g() {
	lg.Info("x", "secret", 1) // BAD
	lg.Info("y", lg.String("server_id", "s"))
}
`

// TestKeyWalker_ReportsEveryBadKey runs the walker over sources with a known
// set of bad keys (each line marked "// BAD") and requires a finding on
// exactly those lines: the source test above can therefore fail.
func TestKeyWalker_ReportsEveryBadKey(t *testing.T) {
	srcs := map[string][]byte{
		"internal/logging/keys.go": []byte(walkLoggingSrc),
		"internal/app/app.go":      []byte(walkAppSrc),
		"internal/app/alias.go":    []byte(walkAliasSrc),
	}
	w, err := checkSources("example.com/m", srcs)
	if err != nil {
		t.Fatal(err)
	}

	want := map[string][]int{
		"internal/app/app.go":   badLines(walkAppSrc),
		"internal/app/alias.go": badLines(walkAliasSrc),
	}
	got := map[string][]int{}
	for _, f := range w.findings {
		got[f.Pos.Filename] = append(got[f.Pos.Filename], f.Pos.Line)
		t.Logf("finding: %s", f)
	}
	for file := range got {
		slices.Sort(got[file])
		got[file] = slices.Compact(got[file]) // one line may hold two findings
	}
	if n := len(want["internal/app/app.go"]); n != 18 {
		t.Fatalf("fixture has %d BAD lines, want 18: update the count", n)
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("findings on lines\n got  %v\n want %v", got, want)
	}
}

// TestKeyWalker_SkipsVendorTestdataAttacksAndTests builds a module on disk
// with a bad key in every place the walk must skip and one where it must not.
func TestKeyWalker_SkipsVendorTestdataAttacksAndTests(t *testing.T) {
	root := t.TempDir()
	bad := "package p\n\nimport \"log/slog\"\n\nfunc f() { slog.Info(\"m\", \"nope\", 1) }\n"
	files := map[string]string{
		"go.mod":                      "module example.com/t\n\ngo 1.26\n",
		"attacks/a.go":                bad,
		"vendor/v/v.go":               bad,
		"internal/x/testdata/t.go":    bad,
		".hidden/h.go":                bad,
		"_old/o.go":                   bad,
		"internal/x/x_test.go":        bad,
		"nested/go.mod":               "module example.com/nested\n",
		"nested/n.go":                 bad,
		"internal/x/x.go":             bad, // the only one that counts
		"cmd/tool/attacks/notroot.go": bad, // only the top-level attacks/ is the client
	}
	for name, src := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	gotRoot, modPath, err := findModuleRoot(filepath.Join(root, "internal", "x"))
	if err != nil || gotRoot != root || modPath != "example.com/t" {
		t.Fatalf("findModuleRoot = %q, %q, %v; want %q, example.com/t", gotRoot, modPath, err, root)
	}
	w, err := checkModuleDir(root, modPath)
	if err != nil {
		t.Fatal(err)
	}
	var reported []string
	for _, f := range w.findings {
		reported = append(reported, f.Pos.Filename)
	}
	slices.Sort(reported)
	if want := []string{"cmd/tool/attacks/notroot.go", "internal/x/x.go"}; !slices.Equal(reported, want) {
		t.Fatalf("findings in %v, want %v", reported, want)
	}
}

func TestAllowedKeys_ClosedAndCopied(t *testing.T) {
	keys := AllowedKeys()
	if !slices.IsSorted(keys) {
		t.Errorf("AllowedKeys not sorted: %v", keys)
	}
	for _, k := range []string{KeyTime, KeyLevel, KeyMsg, KeyDroppedAttrs, KeyEvent, KeyError} {
		if !slices.Contains(keys, k) {
			t.Errorf("AllowedKeys lacks %q", k)
		}
	}
	for _, k := range []string{"token", "payload", "headers", "path", "ip", "source"} {
		if slices.Contains(keys, k) || IsCallerKey(k) {
			t.Errorf("%q must not be allowed", k)
		}
	}
	for _, k := range []string{KeyTime, KeyLevel, KeyMsg, KeyDroppedAttrs} {
		if IsCallerKey(k) {
			t.Errorf("handler-owned key %q must not be a caller key", k)
		}
	}
	keys[0] = "token" // mutating the copy changes nothing
	if slices.Contains(AllowedKeys(), "token") {
		t.Error("AllowedKeys returned shared storage")
	}
}
