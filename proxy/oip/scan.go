package oip

import (
	"bytes"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth bounds the nesting of arrays and objects in a request: the
// scanner recurses once per level.
const maxDepth = 32

// scanner walks JSON text in place. It validates what it passes over
// without allocating, whatever the size of a value, and hands out spans of
// the text, never copies: nothing is built from a request until a caller
// has checked it against its limits.
type scanner struct {
	b     []byte
	i     int // the next byte to read
	depth int // arrays and objects open around s.i
	// keybuf holds an object key with its escapes undone.
	keybuf [64]byte
}

func (s *scanner) syntaxErr() error {
	return errorf("request is not valid JSON: syntax error at byte %d", s.i)
}

// typeErr is the error for a field whose value has the wrong type, or is
// not a value at all (then a syntax error).
func (s *scanner) typeErr(field, want string) error {
	if err := s.skip(); err != nil {
		return err
	}
	if field == "" {
		return errorf("request is not valid JSON: the request must be %s", want)
	}
	return errorf("request is not valid JSON: field %q must be %s", field, want)
}

// peek skips white space and returns the next byte, 0 at the end.
func (s *scanner) peek() byte {
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// end checks that nothing but white space follows the value just read.
func (s *scanner) end() error {
	if s.peek(); s.i < len(s.b) {
		return s.syntaxErr()
	}
	return nil
}

// null consumes a null, if one comes next.
func (s *scanner) null() bool {
	if s.peek() == 'n' && bytes.HasPrefix(s.b[s.i:], []byte("null")) {
		s.i += 4
		return true
	}
	return false
}

// open consumes the opening bracket c of an array or object, and reports
// whether it has a first member (an empty one is consumed whole). A value
// of another type is a type error in field.
func (s *scanner) open(c byte, field, want string) (bool, error) {
	if s.peek() != c {
		return false, s.typeErr(field, want)
	}
	if s.depth == maxDepth {
		return false, errorf("request nests arrays and objects deeper than %d levels", maxDepth)
	}
	s.depth++
	s.i++
	if s.peek() == c+2 { // ']' is '['+2, '}' is '{'+2
		s.i++
		s.depth--
		return false, nil
	}
	return true, nil
}

// next consumes what follows a member of an array or object: a comma
// (true: another member follows) or the closing bracket (false).
func (s *scanner) next(closing byte) (bool, error) {
	switch s.peek() {
	case ',':
		s.i++
		return true, nil
	case closing:
		s.i++
		s.depth--
		return false, nil
	}
	return false, s.syntaxErr()
}

// member consumes an object member's key and its colon, and returns the
// key's text, escapes included.
func (s *scanner) member() ([]byte, error) {
	if s.peek() != '"' {
		return nil, s.syntaxErr()
	}
	raw, err := s.str()
	if err != nil {
		return nil, err
	}
	if s.peek() != ':' {
		return nil, s.syntaxErr()
	}
	s.i++
	return raw, nil
}

// key is member, with the key's escapes undone (in s.keybuf, valid until
// the next key). A key longer than keybuf is returned empty: no field has
// such a name.
func (s *scanner) key() ([]byte, error) {
	raw, err := s.member()
	if err != nil || len(raw) > len(s.keybuf)*6 { // "\u0069" is one byte
		return nil, err
	}
	k, ok := unescape(s.keybuf[:0], raw, len(s.keybuf))
	if !ok {
		return nil, nil
	}
	return k, nil
}

// is reports whether key k names field name. Field names match as
// encoding/json matches them: exactly, or else without regard to case.
func is(k []byte, name string) bool { return bytes.EqualFold(k, []byte(name)) }

// str consumes the string at s.i and returns its text, escapes included.
func (s *scanner) str() ([]byte, error) {
	s.i++ // the opening quote
	start := s.i
	for {
		for s.i < len(s.b) && plainByte[s.b[s.i]] {
			s.i++
		}
		if s.i == len(s.b) {
			return nil, s.syntaxErr()
		}
		switch s.b[s.i] {
		case '"':
			s.i++
			return s.b[start : s.i-1], nil
		case '\\':
			s.i++
			if s.i == len(s.b) {
				return nil, s.syntaxErr()
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i++
			case 'u':
				if s.i+5 > len(s.b) || hex4(s.b[s.i+1:s.i+5]) < 0 {
					return nil, s.syntaxErr()
				}
				s.i += 5
			default:
				return nil, s.syntaxErr()
			}
		default: // a control character
			return nil, s.syntaxErr()
		}
	}
}

// plainByte is the bytes a string holds as they are: not a quote, a backslash
// or a control character.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// hex4 is the value of 4 hex digits, -1 if they are not.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// number consumes a number.
func (s *scanner) number() error {
	b, i := s.b, s.i
	digits := func() bool {
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		s.i = i
		return s.syntaxErr()
	}
	if i < len(b) && b[i] == '.' {
		if i++; !digits() {
			s.i = i
			return s.syntaxErr()
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			s.i = i
			return s.syntaxErr()
		}
	}
	s.i = i
	return nil
}

// integer consumes an integer in int64's range; anything else is a type
// error in field.
func (s *scanner) integer(field, want string) (int64, error) {
	if c := s.peek(); c != '-' && (c < '0' || c > '9') {
		return 0, s.typeErr(field, want)
	}
	start := s.i
	if err := s.number(); err != nil {
		return 0, err
	}
	text := s.b[start:s.i]
	if len(text) > 20 { // longer than any int64, and never copied
		return 0, errorf("request is not valid JSON: field %q must be %s", field, want)
	}
	v, err := strconv.ParseInt(string(text), 10, 64)
	if err != nil {
		return 0, errorf("request is not valid JSON: field %q must be %s", field, want)
	}
	return v, nil
}

// skip consumes a value of any type, validating it.
func (s *scanner) skip() error {
	switch c := s.peek(); c {
	case '{', '[':
		more, err := s.open(c, "", "")
		for more {
			if c == '{' {
				if _, err := s.member(); err != nil {
					return err
				}
			}
			if err := s.skip(); err != nil {
				return err
			}
			if more, err = s.next(c + 2); err != nil {
				return err
			}
		}
		return err
	case '"':
		_, err := s.str()
		return err
	case 't':
		return s.literal("true")
	case 'f':
		return s.literal("false")
	case 'n':
		return s.literal("null")
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return s.number()
	}
	return s.syntaxErr()
}

func (s *scanner) literal(word string) error {
	if !bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		return s.syntaxErr()
	}
	s.i += len(word)
	return nil
}

// string consumes a string into *text (its text, escapes included), or a
// null, which leaves *text as it was (as encoding/json leaves a string);
// another type is a type error in field.
func (s *scanner) string(field string, text *[]byte) error {
	if s.null() {
		return nil
	}
	if s.peek() != '"' {
		return s.typeErr(field, "a string")
	}
	t, err := s.str()
	*text = t
	return err
}

// unescape appends the text of a JSON string (raw, as str returns it) to
// dst with its escapes undone, as encoding/json does: invalid UTF-8 and
// lone surrogates become U+FFFD. It stops before dst grows past max bytes,
// and reports whether the whole text fit.
func unescape(dst, raw []byte, max int) ([]byte, bool) {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c < utf8.RuneSelf && c != '\\' {
			if len(dst) == max {
				return dst, false
			}
			dst = append(dst, c)
			i++
			continue
		}
		var r rune
		switch {
		case c != '\\':
			var size int
			r, size = utf8.DecodeRune(raw[i:])
			i += size
		case raw[i+1] == 'u':
			r = hex4(raw[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					r2 = hex4(raw[i+2:])
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					r = d
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
		default:
			r = rune(raw[i+1])
			switch r {
			case 'b':
				r = '\b'
			case 'f':
				r = '\f'
			case 'n':
				r = '\n'
			case 'r':
				r = '\r'
			case 't':
				r = '\t'
			}
			i += 2
		}
		if len(dst)+utf8.RuneLen(r) > max {
			return dst, false
		}
		dst = utf8.AppendRune(dst, r)
	}
	return dst, true
}
