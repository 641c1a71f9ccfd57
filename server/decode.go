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
	if err := checkObject(dec, reflect.TypeOf(dst).Elem(), ""); err != nil {
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

// checkValue reads one value from dec and checks that it fits t. null fits
// anything: the field keeps its zero value.
func checkValue(dec *json.Decoder, t reflect.Type, path string) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
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
			return checkMap(dec, t, path)
		}
		return checkObject(dec, t, path)
	case reflect.Slice:
		if tok != json.Delim('[') {
			return fieldErr(path, "must be an array")
		}
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return closing(dec)
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

// checkObject checks the members of an object whose '{' has been read
// against struct type t.
func checkObject(dec *json.Decoder, t reflect.Type, path string) error {
	seen := map[string]bool{}
	for dec.More() {
		key, err := objectKey(dec)
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
		if err := checkValue(dec, f.Type, fieldPath); err != nil {
			return err
		}
	}
	return closing(dec)
}

// checkMap checks the members of an object whose '{' has been read against
// map type t, whose keys are the caller's own.
func checkMap(dec *json.Decoder, t reflect.Type, path string) error {
	seen := map[string]bool{}
	for dec.More() {
		key, err := objectKey(dec)
		if err != nil {
			return err
		}
		keyPath := path + "." + key
		if seen[key] {
			return fieldErr(keyPath, "appears more than once")
		}
		seen[key] = true
		if err := checkValue(dec, t.Elem(), keyPath); err != nil {
			return err
		}
	}
	return closing(dec)
}

func objectKey(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", syntaxError(err)
	}
	key, ok := tok.(string)
	if !ok {
		return "", &FieldError{Msg: "invalid JSON: object key is not a string"}
	}
	return key, nil
}

// closing reads the '}' or ']' that ends the current object or array.
func closing(dec *json.Decoder) error {
	if _, err := dec.Token(); err != nil {
		return syntaxError(err)
	}
	return nil
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
