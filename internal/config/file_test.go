package config

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeConfig writes text as a config file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "relay.toml")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}

// Keys are the flag names; every kind of value reads as its flag does; the
// list flags take an array; the file can set the mode.
func TestConfigFile_KeysAreFlagNames_ValuesAsFlags(t *testing.T) {
	p := writeConfig(t, `# a comment
insecure-listen = "127.0.0.1:8080"
max-conns = 100
max-conns-per-ip = 10
max-sockets = 200
upgrade-rate = 2.5
forward-v1-token = true
drain-delay = "3s"
max-message-bytes = 65_536
trust-proxy = ["10.0.0.5/32", "192.168.0.0/16"]
"log-level" = "debug"
`)
	c, err := Parse([]string{"--config", p}, nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, ModeInsecure, c.Mode)
	require.Equal(t, "127.0.0.1:8080", c.InsecureListen)
	require.Equal(t, 100, c.Admission.MaxConns)
	require.Equal(t, 2.5, float64(c.Admission.UpgradeRate))
	require.True(t, c.Relay.ForwardV1Token)
	require.Equal(t, 3*time.Second, c.DrainDelay)
	require.Equal(t, int64(65536), c.Relay.MaxMessageBytes)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32"), netip.MustParsePrefix("192.168.0.0/16")}, c.Admission.TrustedProxies)
	require.Equal(t, "debug", c.LogLevel)
	require.Equal(t, p, c.ConfigFile)
}

// Precedence: the command line over the environment over the file over
// the default; RELAY_CONFIG names the file when --config does not.
func TestConfigFile_Precedence_FlagEnvFileDefault(t *testing.T) {
	p := writeConfig(t, "insecure-listen = \"127.0.0.1:8080\"\nmax-phones = 3\ngrace-period = \"7s\"\nmax-conns = 100\n")
	env := envOf(map[string]string{"RELAY_CONFIG": p, "RELAY_GRACE_PERIOD": "9s", "RELAY_MAX_CONNS": "200"})
	c, err := Parse([]string{"--max-conns", "300"}, env, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 3, c.Relay.MaxPhones, "file over default")
	require.Equal(t, 9*time.Second, c.Relay.GracePeriod, "env over file")
	require.Equal(t, 300, c.Admission.MaxConns, "flag over env and file")
	require.Equal(t, 30*time.Second, c.Relay.PingInterval, "default")

	// --config on the command line wins over RELAY_CONFIG.
	q := writeConfig(t, "insecure-listen = \"127.0.0.1:8080\"\nmax-phones = 5\n")
	c, err = Parse([]string{"--config", q}, env, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 5, c.Relay.MaxPhones)

	from := map[string]string{}
	for _, s := range c.Settings() {
		from[s.Name] = s.From
	}
	require.Equal(t, q+":2", from["max-phones"])
	require.Equal(t, "env", from["grace-period"])
	require.Equal(t, "default", from["ping-interval"])
	_, listed := from["config"]
	require.False(t, listed, "--config is not a setting")
}

// Every refusal names the file and the line, and the key; an unknown key
// is refused, as a mistyped flag is.
func TestConfigFile_Refusals_NameFileLineKey(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"unknown key":      {"insecure-listen = \"127.0.0.1:0\"\n\nmax-con = 5\n", `:3: unknown key max-con; did you mean max-conns?`},
		"dashes":           {"--max-conns = 5\n", `:1: `},
		"not a flag":       {"foo = 1\n", `:1: unknown key foo (`},
		"config in file":   {"config = \"x.toml\"\n", `:1: unknown key config`},
		"check in file":    {"check = true\n", `:1: unknown key check`},
		"wrong case":       {"Max-Conns = 5\n", `:1: unknown key Max-Conns`},
		"dotted key":       {"max-conns.x = 5\n", `:1: unknown key max-conns.x`},
		"table":            {"insecure-listen = \"127.0.0.1:0\"\n[cluster]\nname = \"x\"\n", `:2: [cluster]: tables are not used`},
		"array table":      {"[[peers]]\n", `:1: [peers]: tables are not used`},
		"bad value":        {"insecure-listen = \"127.0.0.1:0\"\nmax-conns = \"lots\"\n", `:2: max-conns = lots is not a whole number, e.g. 4096`},
		"duration number":  {"insecure-listen = \"127.0.0.1:0\"\nping-interval = 30\n", `:2: ping-interval = 30 is not a duration`},
		"array not a list": {"max-conns = [1, 2]\n", `:1: max-conns: want a string, a number or a boolean`},
		"list of numbers":  {"trust-proxy = [1]\n", `:1: trust-proxy: want a string or an array of strings`},
		"inline table":     {"max-conns = {a = 1}\n", `:1: max-conns: want`},
		"date":             {"max-conns = 1979-05-27\n", `:1: max-conns: want`},
		"syntax":           {"insecure-listen = \"127.0.0.1:0\"\nmax-conns = = 4\n", `:2: `},
		"duplicate":        {"max-conns = 5\nmax-conns = 6\n", `:2: key max-conns is already defined`},
		"validation":       {"insecure-listen = \"127.0.0.1:0\"\nmax-phones = 0\n", `:2: max-phones = 0 must be`},
		"conflict":         {"insecure-listen = \"127.0.0.1:0\"\ncert-cache = \"/x\"\n", `cert-cache (`},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeConfig(t, tc.text)
			_, err := Parse([]string{"--config", p}, nil, io.Discard)
			require.Error(t, err)
			require.True(t, errors.Is(err, ErrInvalidConfig), "%v", err)
			require.Contains(t, err.Error(), p, "names the file")
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "\n")
		})
	}
	_, err := Parse([]string{"--config", filepath.Join(t.TempDir(), "missing.toml")}, nil, io.Discard)
	require.ErrorContains(t, err, "--config / RELAY_CONFIG: ")
	require.ErrorContains(t, err, "no such file")
	big := writeConfig(t, "# "+strings.Repeat("x", maxConfigBytes)+"\n")
	_, err = Parse([]string{"--config", big}, nil, io.Discard)
	require.ErrorContains(t, err, "larger than")
}

// A file of only comments is empty, not an error: the shipped conffile is
// all commented examples.
func TestConfigFile_OnlyComments_IsEmpty(t *testing.T) {
	p := writeConfig(t, "# domain = \"relay.example.com\"\n\n# max-conns = 4096\n")
	c, err := Parse([]string{"--config", p, "--insecure-listen", "127.0.0.1:0"}, nil, io.Discard)
	require.NoError(t, err)
	require.Empty(t, c.NonDefault()[1:], "only --insecure-listen differs: %v", c.NonDefault())
}

// A mistyped RELAY_* variable is refused naming it (and the nearest real
// one); a flag's variable, RELAY_PRODUCTION, the tools' variables and
// names without the prefix pass. RELAY_CHECK is no setting.
func TestCheckEnviron_UnknownRelayVariableRefused(t *testing.T) {
	require.NoError(t, CheckEnviron([]string{"RELAY_MAX_CONNS=5", "RELAY_PRODUCTION=1", "RELAY_CONFIG=/x", "RELAY_ATTACK_BINARY=/x", "PATH=/bin", "XRELAY_MAX=1", "RELAY=1"}))
	for env, want := range map[string]string{
		"RELAY_MAX_CON=5":  "unknown variable RELAY_MAX_CON: no flag sets it; did you mean RELAY_MAX_CONNS?",
		"RELAY_CHECK=1":    "unknown variable RELAY_CHECK",
		"RELAY_=1":         "unknown variable RELAY_",
		"RELAY_DOMIAN=x.y": "did you mean RELAY_DOMAIN?",
		"RELAY_ZZZZZZZZ=":  "unknown variable RELAY_ZZZZZZZZ: no flag sets it (",
	} {
		err := CheckEnviron([]string{"PATH=/bin", env})
		require.Error(t, err, env)
		require.True(t, errors.Is(err, ErrInvalidConfig))
		require.Contains(t, err.Error(), want)
	}
	err := CheckEnviron([]string{"RELAY_B=1", "RELAY_A=1"})
	require.ErrorContains(t, err, "RELAY_A")
	require.ErrorContains(t, err, "(and 1 more)")
}

// Every RELAY_* name in the repository is a flag's variable or listed in
// OtherVariables (so relay serve does not refuse a variable the project
// itself uses), and docs/deploy.md names each of OtherVariables.
func TestOtherVariables_EveryNameInTheRepository(t *testing.T) {
	known := map[string]bool{}
	var c Config
	var trust string
	fs := newFlagSet(&c, func(string) string { return "" }, &trust, new(flagSink))
	for name := range fileKeys(fs) {
		known[EnvName(name)] = true
	}
	known[EnvName("config")] = true
	for _, v := range OtherVariables {
		known[v.Name] = true
	}
	// Placeholders in prose, not variables.
	for _, p := range []string{"RELAY_NAME", "RELAY_X", "RELAY_ATTACK", "RELAY_CHECK", "RELAY_MAX_CON", "RELAY_DOMIAN", "RELAY_ZZZZZZZZ", "RELAY_A", "RELAY_B"} {
		known[p] = true
	}
	name := regexp.MustCompile(`\bRELAY_[A-Z0-9_]*[A-Z0-9]`)
	root := filepath.Join("..", "..")
	seen := 0
	require.NoError(t, filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "node_modules", "testdata":
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".md", ".sh", ".service", ".timer", ".conf", ".yml", ".yaml", ".toml", "":
		default:
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		seen++
		for _, m := range name.FindAll(data, -1) {
			if !known[string(m)] {
				t.Errorf("%s uses %s: neither a flag's variable nor in config.OtherVariables (add it there and to docs/deploy.md §8)", path, m)
			}
		}
		return nil
	}))
	require.Greater(t, seen, 50)
	doc, err := os.ReadFile(filepath.Join(root, "docs", "deploy.md"))
	require.NoError(t, err)
	for _, v := range OtherVariables {
		require.True(t, bytes.Contains(doc, []byte("`"+v.Name+"`")), "docs/deploy.md does not name `%s`", v.Name)
	}
}

// URL passwords never reach --check's output or the start-up log.
func TestSettings_RedactURLPasswords(t *testing.T) {
	c, err := Parse([]string{"--insecure-listen", "127.0.0.1:0", "--cluster-nats", "nats://relay:s3cret@127.0.0.1:4222,tls://b:4222"}, nil, io.Discard)
	require.NoError(t, err)
	var out bytes.Buffer
	WriteSettings(&out, c.Settings())
	require.NotContains(t, out.String(), "s3cret")
	require.Contains(t, out.String(), "cluster-nats = 'nats://relay:xxxxx@127.0.0.1:4222,tls://b:4222'  # flag")
	for _, s := range c.NonDefault() {
		require.NotContains(t, s.Value, "s3cret")
	}
	// And what --check prints reads back as the same settings.
	p := writeConfig(t, out.String())
	back, err := Parse([]string{"--config", p, "--cluster-nats", "nats://127.0.0.1:4222"}, nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, c.Admission, back.Admission)
	require.Equal(t, c.Relay, back.Relay)
}

// A file error names the flag and its variable, and the file's line when
// the file set it.
func TestNameFile_NamesFlagVariableAndLine(t *testing.T) {
	cause := errors.New("TLS key file: stat k.pem: no such file or directory")
	var c Config
	err := c.NameFile(cause, "tls-key")
	require.Equal(t, "--tls-key / RELAY_TLS_KEY: TLS key file: stat k.pem: no such file or directory", err.Error())
	require.ErrorIs(t, err, cause)
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.Equal(t, "--tls-cert / RELAY_TLS_CERT and --tls-key / RELAY_TLS_KEY: x", c.NameFile(errors.New("x"), "tls-cert", "tls-key").Error())
	p := writeConfig(t, "insecure-listen = \"127.0.0.1:0\"\nfcm-credentials = \"/k.json\"\n")
	c, perr := Parse([]string{"--config", p}, nil, io.Discard)
	require.NoError(t, perr)
	require.Equal(t, "--fcm-credentials / RELAY_FCM_CREDENTIALS (set in "+p+":2): x", c.NameFile(errors.New("x"), "fcm-credentials").Error())
	require.NoError(t, c.NameFile(nil, "tls-key"))
}
