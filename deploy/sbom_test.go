package deploy

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// cdx is the part of a CycloneDX JSON document this test reads.
type cdx struct {
	BOMFormat string `json:"bomFormat"`
	Metadata  struct {
		Component struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"component"`
		Properties []struct{ Name, Value string } `json:"properties"`
	} `json:"metadata"`
	Components []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
		Hashes  []struct {
			Alg     string `json:"alg"`
			Content string `json:"content"`
		} `json:"hashes"`
	} `json:"components"`
}

// TestSBOM_MatchesBinary checks `make sbom`'s output against the binary it
// describes: the same file (SHA-256), the release version it was stamped
// with, and exactly the modules `go version -m` lists, at the same versions
// and go.sum hashes; so test-only modules (testify, Pebble, rapid) never
// appear. `make sbom` runs it with RELAY_SBOM, RELAY_SBOM_BINARY and
// RELAY_SBOM_VERSION set; without them (plain go test) it skips.
func TestSBOM_MatchesBinary(t *testing.T) {
	sbomPath, bin, version := os.Getenv("RELAY_SBOM"), os.Getenv("RELAY_SBOM_BINARY"), os.Getenv("RELAY_SBOM_VERSION")
	if sbomPath == "" || bin == "" || version == "" {
		t.Skip("run by make sbom (RELAY_SBOM, RELAY_SBOM_BINARY, RELAY_SBOM_VERSION)")
	}
	b, err := os.ReadFile(sbomPath)
	require.NoError(t, err)
	var doc cdx
	require.NoError(t, json.Unmarshal(b, &doc))
	require.Equal(t, "CycloneDX", doc.BOMFormat)
	require.Equal(t, "github.com/pyrycode/relay", doc.Metadata.Component.Name)
	require.Equal(t, version, doc.Metadata.Component.Version, "the SBOM is stamped with the release version")

	props := map[string]string{}
	for _, p := range doc.Metadata.Properties {
		props[p.Name] = p.Value
	}
	exe, err := os.ReadFile(bin)
	require.NoError(t, err)
	sum := sha256.Sum256(exe)
	require.Equal(t, hex.EncodeToString(sum[:]), props["cdx:gomod:binary:hash:SHA-256"], "the SBOM describes another binary")

	out, err := exec.Command("go", "version", "-m", bin).Output()
	require.NoError(t, err)
	require.Equal(t, strings.Fields(string(out))[1], props["cdx:gomod:build:env:GOVERSION"], "toolchain")
	want := map[string]string{} // module@version -> hex SHA-256 of its go.sum h1 hash
	// dep lines, and => lines replacing the dep above them.
	re := regexp.MustCompile(`(?m)^\s+(dep|=>)\s+(\S+)\s+(\S+)(?:\s+h1:(\S+))?$`)
	last := ""
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		if m[1] == "=>" {
			delete(want, last)
		}
		h := ""
		if m[4] != "" {
			raw, err := base64.StdEncoding.DecodeString(m[4])
			require.NoError(t, err)
			h = hex.EncodeToString(raw)
		}
		last = m[2] + "@" + m[3]
		want[last] = h
	}
	require.NotEmpty(t, want)

	got := map[string]string{}
	for _, c := range doc.Components {
		h := ""
		for _, x := range c.Hashes {
			if x.Alg == "SHA-256" {
				h = x.Content
			}
		}
		got[c.Name+"@"+c.Version] = h
	}
	require.Equal(t, keys(want), keys(got), "SBOM components vs go version -m")
	require.Equal(t, want, got, "SBOM hashes vs the binary's go.sum hashes")
	for k := range got {
		for _, testOnly := range []string{"github.com/stretchr/testify", "github.com/letsencrypt/pebble", "pgregory.net/rapid"} {
			require.False(t, strings.HasPrefix(k, testOnly), "test-only module %s in the SBOM", k)
		}
	}
	t.Logf("SBOM %s: %d modules, version %s, matches %s", sbomPath, len(got), version, bin)
}

func keys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}
