package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"github.com/labstack/echo/v5"
)

// decodeBody reads at most maxBodyBytes of the request body into dst, a
// pointer to a request struct. A larger body fails with *http.MaxBytesError
// (413); anything but one JSON object of dst's shape fails with a
// *FieldError (400).
func decodeBody(c *echo.Context, dst any) error {
	body := http.MaxBytesReader(c.Response(), c.Request().Body, maxBodyBytes)
	data, err := io.ReadAll(body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		// Most likely the caller went away mid-body.
		return fmt.Errorf("reading request body: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	return decodeJSON(data, dst)
}

// decodeJSON is stricter than encoding/json, so that a caller's typo is
// reported rather than silently ignored: field names must match exactly
// (encoding/json would take "Image" for "image"), a field may appear once,
// unknown fields and trailing data are rejected, and every error names the
// JSON path at fault (resources.cpus, env.FOO, command[2]).
func decodeJSON(data []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	tok, err := dec.Token()
	switch {
	case err == io.EOF:
		return &FieldError{Msg: "request body is empty"}
	case err != nil:
		return syntaxError(err)
	case tok != json.Delim('{'):
		return &FieldError{Msg: "request body must be a JSON object"}
	}
	w := &walker{dec: dec, data: data}
	if err := w.object(reflect.TypeOf(dst).Elem(), ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return &FieldError{Msg: "unexpected data after the JSON object"}
	}
	// The shape was checked above, so this fails only on what the check
	// leaves to encoding/json; it still names the field.
	if err := json.Unmarshal(data, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fieldErr(te.Field, "must be %s", describeType(te.Type))
		}
		return &FieldError{Msg: "invalid JSON: " + err.Error()}
	}
	return nil
}

func syntaxError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
		return &FieldError{Msg: "invalid JSON: unexpected end of input"}
	}
	return &FieldError{Msg: "invalid JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
}

// walker checks a body token by token against a request struct. It keeps
// the raw body so that each string can be checked as it was written:
// encoding/json turns bytes that are not UTF-8, and a UTF-16 surrogate
// escape without its pair, into U+FFFD without a word, and a container
// would be created from the changed value.
type walker struct {
	dec  *json.Decoder
	data []byte
}

// token reads the next token and, when it is a string, the string's
// literal as written, quotes included.
func (w *walker) token() (json.Token, []byte, error) {
	from := w.dec.InputOffset()
	tok, err := w.dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if _, ok := tok.(string); !ok {
		return tok, nil, nil
	}
	// Between the previous token and this one lie only white space, ':'
	// and ',': the first quote opens the string.
	raw := w.data[from:w.dec.InputOffset()]
	return tok, raw[bytes.IndexByte(raw, '"'):], nil
}

// checkValue reads one value and checks that it fits t. null fits
// anything: the field keeps its zero value.
func (w *walker) checkValue(t reflect.Type, path string) error {
	tok, raw, err := w.token()
	if err != nil {
		return syntaxError(err)
	}
	if raw != nil {
		if problem := unmeantString(raw); problem != "" {
			return fieldErr(path, "%s", problem)
		}
	}
	if tok == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		if tok != json.Delim('{') {
			return fieldErr(path, "must be an object")
		}
		if t.Kind() == reflect.Map {
			return w.checkMap(t, path)
		}
		return w.object(t, path)
	case reflect.Slice:
		if tok != json.Delim('[') {
			return fieldErr(path, "must be an array")
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.checkValue(t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return w.closing()
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return fieldErr(path, "must be a string")
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return fieldErr(path, "must be a boolean")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return fieldErr(path, "must be an integer")
		}
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			return fieldErr(path, "must be an integer of at most %d bits", t.Bits())
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := tok.(json.Number)
		if !ok {
			return fieldErr(path, "must be a non-negative integer")
		}
		if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
			return fieldErr(path, "must be a non-negative integer of at most %d bits", t.Bits())
		}
	case reflect.Float32, reflect.Float64:
		n, ok := tok.(json.Number)
		if !ok {
			return fieldErr(path, "must be a number")
		}
		if _, err := strconv.ParseFloat(string(n), t.Bits()); err != nil {
			return fieldErr(path, "must be a number in range")
		}
	default:
		// Only request structs come here; a new field of another kind
		// needs a case above.
		return fmt.Errorf("decoding %s: unsupported type %s", path, t)
	}
	return nil
}

// object checks the members of an object whose '{' has been read against
// struct type t.
func (w *walker) object(t reflect.Type, path string) error {
	seen := map[string]bool{}
	for w.dec.More() {
		key, err := w.objectKey(path)
		if err != nil {
			return err
		}
		fieldPath := joinPath(path, key)
		f, ok := fieldByJSONName(t, key)
		if !ok {
			return fieldErr(fieldPath, "unknown field")
		}
		if seen[key] {
			return fieldErr(fieldPath, "appears more than once")
		}
		seen[key] = true
		if err := w.checkValue(f.Type, fieldPath); err != nil {
			return err
		}
	}
	return w.closing()
}

// checkMap checks the members of an object whose '{' has been read against
// map type t, whose keys are the caller's own.
func (w *walker) checkMap(t reflect.Type, path string) error {
	seen := map[string]bool{}
	for w.dec.More() {
		key, err := w.objectKey(path)
		if err != nil {
			return err
		}
		keyPath := path + "." + key
		if seen[key] {
			return fieldErr(keyPath, "appears more than once")
		}
		seen[key] = true
		if err := w.checkValue(t.Elem(), keyPath); err != nil {
			return err
		}
	}
	return w.closing()
}

// objectKey reads the key of a member of the object at path. A key that
// is not text is refused under the path of the key as it was written
// (env.A\ud800, env.A\xff), since its decoded form is not what the caller
// wrote.
func (w *walker) objectKey(path string) (string, error) {
	tok, raw, err := w.token()
	if err != nil {
		return "", syntaxError(err)
	}
	key, ok := tok.(string)
	if !ok {
		return "", &FieldError{Msg: "invalid JSON: object key is not a string"}
	}
	if problem := unmeantString(raw); problem != "" {
		return "", fieldErr(joinPath(path, asWritten(raw)), "key %s", problem)
	}
	return key, nil
}

// closing reads the '}' or ']' that ends the current object or array.
func (w *walker) closing() error {
	if _, err := w.dec.Token(); err != nil {
		return syntaxError(err)
	}
	return nil
}

// unmeantString says why the JSON string literal raw, which the decoder
// has accepted, holds no text the caller can have meant, or "" when it
// does: bytes that are not UTF-8 (RFC 8259 requires it), or an escaped
// UTF-16 surrogate that is not the high half of a pair followed by the
// low half. encoding/json would put U+FFFD in their place.
func unmeantString(raw []byte) string {
	if !utf8.Valid(raw) {
		return "must be valid UTF-8"
	}
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++
		if raw[i] != 'u' {
			continue
		}
		r := hexRune(raw[i+1 : i+5])
		i += 4
		if !utf16.IsSurrogate(r) {
			continue
		}
		if r < 0xdc00 && i+6 < len(raw) && raw[i+1] == '\\' && raw[i+2] == 'u' {
			if lo := hexRune(raw[i+3 : i+7]); lo >= 0xdc00 && lo <= 0xdfff {
				i += 6
				continue
			}
		}
		return "must not hold an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
	}
	return ""
}

// hexRune reads the four hex digits of a \u escape the decoder accepted.
func hexRune(digits []byte) rune {
	n, _ := strconv.ParseUint(string(digits), 16, 32)
	return rune(n)
}

// asWritten is the text between the quotes of the string literal raw,
// escapes as the caller wrote them, and each byte that is not UTF-8 as
// \xNN, so that an error can name a key whose decoded form would hide it.
func asWritten(raw []byte) string {
	raw = raw[1 : len(raw)-1]
	var b strings.Builder
	for len(raw) > 0 {
		r, size := utf8.DecodeRune(raw)
		if r == utf8.RuneError && size == 1 {
			fmt.Fprintf(&b, "\\x%02x", raw[0])
		} else {
			b.Write(raw[:size])
		}
		raw = raw[size:]
	}
	return b.String()
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldByJSONName finds the field of struct t whose JSON name is exactly
// name.
func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.IsExported() && jsonName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// jsonName is the name encoding/json gives field f, or "" when it skips it.
func jsonName(f reflect.StructField) string {
	tag := f.Tag.Get("json")
	if tag == "-" {
		return ""
	}
	if name, _, _ := strings.Cut(tag, ","); name != "" {
		return name
	}
	return f.Name
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Slice:
		return "an array"
	}
	return "an object"
}
