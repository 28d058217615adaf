package relay

import (
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// A single-pass JSON scanner for the two hot paths: validating every phone
// frame and walking every binary envelope. It accepts exactly what
// encoding/json.Valid accepts (FuzzJSONValid_MatchesEncodingJSON checks it
// byte for byte), and optionally also requires valid UTF-8 inside strings,
// which is the only place a valid document can hold a byte >= 0x80. It never
// allocates unless nesting passes smallDepth, and never recurses, so a deeply
// nested frame costs stack space neither here nor in the goroutine.

// maxJSONDepth is encoding/json's nesting limit: json.Valid rejects a
// document nested deeper, so the scanner must too.
const maxJSONDepth = 10000

// smallDepth containers fit the scanner's inline stack; deeper documents
// (rare, attacker-made) spill to the heap.
const smallDepth = 256

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// wsTable marks JSON's four whitespace bytes.
var wsTable = [256]bool{' ': true, '\t': true, '\n': true, '\r': true}

func skipWS(d []byte, i int) int {
	for i < len(d) && wsTable[d[i]] {
		i++
	}
	return i
}

// jsonValid reports whether d is one JSON value (encoding/json.Valid's
// grammar and depth limit). With checkUTF8 it also requires valid UTF-8.
func jsonValid(d []byte, checkUTF8 bool) bool {
	i := skipWS(d, 0)
	i, ok := skipValue(d, i, 0, checkUTF8)
	return ok && skipWS(d, i) == len(d)
}

// validJSONObject reports whether d is one JSON object in valid UTF-8: the
// phone-frame rule (protocol §5), in one pass.
func validJSONObject(d []byte) bool {
	i := skipWS(d, 0)
	if i >= len(d) || d[i] != '{' {
		return false
	}
	return jsonValid(d, true)
}

// skipString scans the string starting at d[i] == '"' and returns the index
// just past its closing quote.
//
//go:noinline
func skipString(d []byte, i int, checkUTF8 bool) (int, bool) {
	i++ // opening quote
	// specialHigh selects the bytes >= 0x80 when they need a UTF-8 check.
	var specialHigh uint64
	if checkUTF8 {
		specialHigh = msb
	}
	for {
		// Eight bytes first (keys and short strings end there), then
		// thirty-two and eight at a time while none is special: a quote, a
		// backslash, a control byte, or (checkUTF8) a non-ASCII byte. Long
		// base64 payloads are the common case.
		if i+8 <= len(d) {
			if m := special(binary.LittleEndian.Uint64(d[i:]), specialHigh); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				goto stop
			}
			i += 8
		}
		for i+32 <= len(d) {
			w := d[i : i+32 : i+32]
			x0, x1 := binary.LittleEndian.Uint64(w[0:]), binary.LittleEndian.Uint64(w[8:])
			x2, x3 := binary.LittleEndian.Uint64(w[16:]), binary.LittleEndian.Uint64(w[24:])
			if (^(plain(x0)&plain(x1)&plain(x2)&plain(x3))|(x0|x1|x2|x3)&specialHigh)&msb != 0 {
				break
			}
			i += 32
		}
		for i+8 <= len(d) {
			if m := special(binary.LittleEndian.Uint64(d[i:]), specialHigh); m != 0 {
				// Straight to the first flagged byte (special flags no
				// lane below a special byte), so short strings and a
				// string's last bytes are not walked a byte at a time.
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
	stop:
		if i >= len(d) {
			return i, false
		}
		c := d[i]
		switch {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if i+1 >= len(d) {
				return i, false
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d) || !isHex(d[i+2]) || !isHex(d[i+3]) || !isHex(d[i+4]) || !isHex(d[i+5]) {
					return i, false
				}
				i += 6
			default:
				return i, false
			}
		case c < 0x20:
			return i, false
		case c >= utf8.RuneSelf && checkUTF8:
			r, size := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && size == 1 {
				return i, false
			}
			i += size
		default:
			i++
		}
	}
}

// special has the high bit set in the byte lane of every byte of x that is
// a quote, a backslash, below 0x20, or (high = msb) at least 0x80, and is
// zero only when no byte is special. Each lane is computed on its own low
// seven bits (plain), so no carry crosses lanes: an ASCII lane is flagged
// exactly, and a lane >= 0x80 is flagged when high = msb, or possibly (a
// harmless false hit the caller steps over) when high = 0.
func special(x, high uint64) uint64 {
	return (^plain(x) | x&high) & msb
}

// plain has the high bit set in the lanes of x whose low seven bits are
// neither below 0x20, nor a quote, nor a backslash. A quote is 0x22: with
// bit 1 flipped, a control byte stays below 0x20 and a quote becomes 0x20,
// so one comparison (below 0x21) finds both.
func plain(x uint64) uint64 {
	const low7 = lsb * 0x7f
	m := x & low7
	return ((m ^ lsb*0x02) + lsb*(0x80-0x21)) & // high bit set: neither a control byte nor a quote
		((m ^ lsb*'\\') + low7) // high bit set: not a backslash
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// skipNumber scans JSON's number grammar from d[i].
func skipNumber(d []byte, i int) (int, bool) {
	if d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && '1' <= d[i] && d[i] <= '9':
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	default:
		return i, false
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return i, false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return i, false
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	return i, true
}

func skipLiteral(d []byte, i int, lit string) (int, bool) {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return i, false
	}
	return i + len(lit), true
}

// skipValue scans one JSON value starting at d[i] (no leading whitespace)
// and returns the index just past it. depth is how many containers already
// enclose it, so the depth limit counts from the document's root.
func skipValue(d []byte, i int, depth int, checkUTF8 bool) (int, bool) {
	// inObject[k] says whether the k-th open container is an object.
	var small [smallDepth]bool
	inObject := small[:0]
	var ok bool
	for {
		// A value is expected at i.
		if i >= len(d) {
			return i, false
		}
		switch c := d[i]; {
		case c == '{' || c == '[':
			if depth+len(inObject) >= maxJSONDepth {
				return i, false
			}
			inObject = append(inObject, c == '{')
			i = skipWS(d, i+1)
			if i < len(d) && (d[i] == '}' && c == '{' || d[i] == ']' && c == '[') {
				i++
				inObject = inObject[:len(inObject)-1]
				ok = true
				break // an empty container is a complete value
			}
			if c == '{' {
				if i, ok = skipMemberKey(d, i, checkUTF8); !ok {
					return i, false
				}
			}
			continue // the first element or member value
		case c == '"':
			i, ok = skipString(d, i, checkUTF8)
		case c == '-' || isDigit(c):
			i, ok = skipNumber(d, i)
		case c == 't':
			i, ok = skipLiteral(d, i, "true")
		case c == 'f':
			i, ok = skipLiteral(d, i, "false")
		case c == 'n':
			i, ok = skipLiteral(d, i, "null")
		default:
			return i, false
		}
		if !ok {
			return i, false
		}
		// A value ended: close containers or move to the next element.
	after:
		for len(inObject) > 0 {
			i = skipWS(d, i)
			if i >= len(d) {
				return i, false
			}
			obj := inObject[len(inObject)-1]
			switch d[i] {
			case ',':
				i = skipWS(d, i+1)
				if obj {
					if i, ok = skipMemberKey(d, i, checkUTF8); !ok {
						return i, false
					}
				}
				break after
			case '}', ']':
				if (d[i] == '}') != obj {
					return i, false
				}
				i++
				inObject = inObject[:len(inObject)-1]
			default:
				return i, false
			}
		}
		if len(inObject) == 0 {
			return i, true
		}
	}
}

// skipMemberKey scans `"key" :` and the whitespace after the colon.
func skipMemberKey(d []byte, i int, checkUTF8 bool) (int, bool) {
	if i >= len(d) || d[i] != '"' {
		return i, false
	}
	i, ok := skipString(d, i, checkUTF8)
	if !ok {
		return i, false
	}
	i = skipWS(d, i)
	if i >= len(d) || d[i] != ':' {
		return i, false
	}
	return skipWS(d, i+1), true
}

// memberIter walks the members of one object, validating as it goes.
type memberIter struct {
	d     []byte
	i     int
	depth int // containers enclosing the object's members (the object included)
	begun bool
	err   bool
}

// newMemberIter starts at d[i] == '{'; depth counts the object itself.
func newMemberIter(d []byte, i, depth int) memberIter {
	it := memberIter{d: d, i: i + 1, depth: depth}
	if depth > maxJSONDepth {
		it.err = true
	}
	return it
}

// next returns the next member's raw key (quotes included) and raw value.
// It returns ok=false at the closing brace (it.i is then just past it) or
// on malformed input (it.err).
func (it *memberIter) next() (key, val []byte, ok bool) {
	if it.err {
		return nil, nil, false
	}
	d := it.d
	i := skipWS(d, it.i)
	if i >= len(d) {
		it.err = true
		return nil, nil, false
	}
	if it.begun {
		switch d[i] {
		case '}':
			it.i = i + 1
			return nil, nil, false
		case ',':
			i = skipWS(d, i+1)
		default:
			it.err = true
			return nil, nil, false
		}
	} else {
		it.begun = true
		if d[i] == '}' {
			it.i = i + 1
			return nil, nil, false
		}
	}
	if i >= len(d) || d[i] != '"' {
		it.err = true
		return nil, nil, false
	}
	ks := i
	i, ok = skipString(d, i, true)
	if !ok {
		it.err = true
		return nil, nil, false
	}
	key = d[ks:i]
	i = skipWS(d, i)
	if i >= len(d) || d[i] != ':' {
		it.err = true
		return nil, nil, false
	}
	i = skipWS(d, i+1)
	vs := i
	if i, ok = skipValue(d, i, it.depth, true); !ok {
		it.err = true
		return nil, nil, false
	}
	it.i = i
	return key, d[vs:i], true
}
