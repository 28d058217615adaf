package attacks

import (
	"html"
	"html/template"
	"regexp"
	"strings"

	"github.com/pyrycode/relay/docs"
)

// The threat model's entries as built into the binary (package docs), for
// the HTML report: each threat's anchor, heading and bullets, and the small
// part of Markdown those bullets use (`code`, **bold**, [text](link))
// rendered as HTML.

// threatEntry is one threat of docs/threat-model.md.
type threatEntry struct {
	ID, Title string
	Items     [][]string // the bullets, each its lines (indent trimmed, blank ones kept), as Markdown
}

var (
	entryAnchorRE  = regexp.MustCompile(`^<a id="(TM-[A-Z]+-\d+)"></a>$`)
	entryHeadingRE = regexp.MustCompile(`^### (TM-[A-Z]+-\d+) (.+)$`)
)

// threatEntries parses the embedded threat model, in document order: an
// entry is an anchor line, its ### heading, and the bullets up to the next
// anchor or heading.
func threatEntries() []threatEntry {
	return parseThreatEntries(docs.ThreatModel)
}

func parseThreatEntries(md string) []threatEntry {
	var out []threatEntry
	var cur *threatEntry
	anchor := ""
	for _, line := range strings.Split(md, "\n") {
		line = strings.TrimRight(line, " \r")
		if m := entryAnchorRE.FindStringSubmatch(line); m != nil {
			anchor, cur = m[1], nil
			continue
		}
		if strings.HasPrefix(line, "#") {
			cur = nil
			if m := entryHeadingRE.FindStringSubmatch(line); m != nil && m[1] == anchor {
				out = append(out, threatEntry{ID: m[1], Title: m[2]})
				cur = &out[len(out)-1]
			}
			anchor = ""
			continue
		}
		if cur == nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "- "):
			cur.Items = append(cur.Items, []string{strings.TrimPrefix(line, "- ")})
		case len(cur.Items) > 0 && (line == "" || strings.HasPrefix(line, "  ")):
			it := &cur.Items[len(cur.Items)-1]
			*it = append(*it, strings.TrimSpace(line))
		}
	}
	return out
}

var (
	mdBoldRE = regexp.MustCompile(`\*\*(.+?)\*\*`)
	mdLinkRE = regexp.MustCompile(`\[([^\]]+)\]\(([^)\s]+)\)`)
	// repoPathRE is a code span that names a repository file or folder.
	repoPathRE = regexp.MustCompile(`^(?:internal|cmd|attacks|docs|deploy)/[A-Za-z0-9_./-]*[A-Za-z0-9_/]$`)
)

// mdBlock renders one bullet's lines: runs of table rows (| a | b |, the
// second a separator) as a table, other runs of lines as paragraphs of
// mdInline text, blank lines between them.
func mdBlock(lines []string, base string) template.HTML {
	var b strings.Builder
	var para []string
	flush := func() {
		if len(para) > 0 {
			if b.Len() > 0 {
				b.WriteString("<br>")
			}
			b.WriteString(string(mdInline(strings.Join(para, " "), base)))
			para = nil
		}
	}
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "|") {
			if lines[i] == "" {
				flush()
			} else {
				para = append(para, lines[i])
			}
			continue
		}
		flush()
		b.WriteString("<table>")
		for row := 0; i < len(lines) && strings.HasPrefix(lines[i], "|"); i, row = i+1, row+1 {
			if row == 1 && strings.Trim(lines[i], "|-: ") == "" {
				continue // the separator
			}
			cell := "td"
			if row == 0 {
				cell = "th"
			}
			b.WriteString("<tr>")
			for _, c := range strings.Split(strings.Trim(lines[i], "|"), "|") {
				b.WriteString("<" + cell + ">" + string(mdInline(strings.TrimSpace(c), base)) + "</" + cell + ">")
			}
			b.WriteString("</tr>")
		}
		b.WriteString("</table>")
		i--
	}
	flush()
	return template.HTML(b.String()) // #nosec G203 -- every piece is escaped by mdInline
}

// mdInline renders one line of the threat model's Markdown as HTML:
// [text](target) with targets relative to docs/ resolved under base
// (docLink), code spans as <code> (one naming a repository path also
// links it under base), and **bold**. Everything else is escaped text.
func mdInline(md, base string) template.HTML {
	var b strings.Builder
	last := 0
	for _, m := range mdLinkRE.FindAllStringSubmatchIndex(md, -1) {
		b.WriteString(mdSpans(md[last:m[0]], base, true))
		target := md[m[4]:m[5]]
		b.WriteString(`<a href="` + html.EscapeString(docLink(base, target)) + `">` + mdSpans(md[m[2]:m[3]], base, false) + "</a>")
		last = m[1]
	}
	b.WriteString(mdSpans(md[last:], base, true))
	return template.HTML(b.String()) // #nosec G203 -- every piece is escaped by mdSpans
}

// mdSpans renders code spans and bold in md, escaping the rest; a code span
// naming a repository path links it under base when link is set (not
// inside another link).
func mdSpans(md, base string, link bool) string {
	var b strings.Builder
	for i, part := range strings.Split(md, "`") {
		if i%2 == 1 {
			code := "<code>" + html.EscapeString(part) + "</code>"
			if link && repoPathRE.MatchString(part) && !strings.Contains(part, "..") {
				code = `<a href="` + html.EscapeString(base+strings.TrimSuffix(part, "/")) + `">` + code + "</a>"
			}
			b.WriteString(code)
			continue
		}
		b.WriteString(mdBoldRE.ReplaceAllString(html.EscapeString(part), "<b>$1</b>"))
	}
	return b.String()
}
