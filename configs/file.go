package configs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/tailscale/hujson"
)

// A config file is HuJSON (JSON with comments and trailing commas) holding
// one object. Its keys are the role's flag names with "_" for "-"
// (--tcp-ports is "tcp_ports"); a flag that may be repeated takes a list.
// A key the role does not know is an error, so a typo is never a setting
// silently left at its default.

// FileError is a problem in a config file, at a line (1-based; zero when
// unknown).
type FileError struct {
	File string
	Line int
	// Key is the offending key, if the problem is one key.
	Key string
	Msg string
	Err error
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("config %s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("config %s: %s", e.File, e.Msg)
}

func (e *FileError) Unwrap() error { return e.Err }

// LoadFile reads the HuJSON file at path into v, a pointer to a role's
// config that already holds its defaults: keys present replace them, keys
// absent leave them. It returns the top-level keys the file sets (so
// flags can tell a setting the file made from a default).
func LoadFile(path string, v any) (keys map[string]bool, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Decode(path, b, v)
}

// Decode is LoadFile on the contents b of the file named name.
func Decode(name string, b []byte, v any) (keys map[string]bool, err error) {
	root, err := hujson.Parse(b)
	if err != nil {
		fe := &FileError{File: name, Msg: err.Error(), Err: err}
		var line, col int
		if n, _ := fmt.Sscanf(err.Error(), "hujson: line %d, column %d:", &line, &col); n == 2 {
			fe.Line = line
			if _, rest, ok := strings.Cut(err.Error(), fmt.Sprintf("column %d: ", col)); ok {
				fe.Msg = "syntax error: " + rest
			}
		}
		return nil, fe
	}
	obj, ok := root.Value.(*hujson.Object)
	if !ok {
		return nil, &FileError{File: name, Line: lineAt(b, root.StartOffset), Msg: "want one object {...}"}
	}
	// encoding/json matches keys without regard to case: check the
	// top-level ones exactly here, with their lines.
	known := Keys(v)
	keys = map[string]bool{}
	for i := range obj.Members {
		k, _ := obj.Members[i].Name.Value.(hujson.Literal)
		s := k.String()
		line := lineAt(b, obj.Members[i].Name.StartOffset)
		if known != nil && !slices.Contains(known, s) {
			return nil, &FileError{File: name, Line: line, Key: s, Msg: fmt.Sprintf("unknown key %q (known keys: %s)", s, strings.Join(known, ", "))}
		}
		if keys[s] {
			return nil, &FileError{File: name, Line: line, Key: s, Msg: fmt.Sprintf("key %q appears twice", s)}
		}
		keys[s] = true
	}
	root.Standardize() // comments become spaces: offsets and lines stay
	std := root.Pack()
	dec := json.NewDecoder(bytes.NewReader(std))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return nil, decodeError(name, b, &root, v, err)
	}
	return keys, nil
}

// decodeError turns an encoding/json error into a FileError naming the
// key and its line.
func decodeError(name string, src []byte, root *hujson.Value, v any, err error) error {
	fe := &FileError{File: name, Msg: err.Error(), Err: err}
	if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		k = strings.Trim(k, `"`)
		fe.Key = k
		fe.Msg = fmt.Sprintf("unknown key %q", k)
		off, parent := findKey(root, k)
		if off >= 0 {
			fe.Line = lineAt(src, off)
		}
		if parent == root {
			if known := Keys(v); len(known) > 0 {
				fe.Msg += " (known keys: " + strings.Join(known, ", ") + ")"
			}
		}
		return fe
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		fe.Key = te.Field
		fe.Line = lineAt(src, int(te.Offset))
		fe.Msg = fmt.Sprintf("key %q: want %s, not a JSON %s", te.Field, typeName(te.Type), te.Value)
		return fe
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		fe.Line = lineAt(src, int(se.Offset))
		return fe
	}
	// An UnmarshalText method's error (a bad duration) names no key:
	// decode the top-level members one by one to find it.
	if obj, ok := root.Value.(*hujson.Object); ok {
		t := reflect.TypeOf(v)
		for i := range obj.Members {
			m := &obj.Members[i]
			one := []byte("{" + string(m.Name.Pack()) + ":" + string(m.Value.Pack()) + "}")
			if json.Unmarshal(one, reflect.New(t.Elem()).Interface()) != nil {
				lit, _ := m.Name.Value.(hujson.Literal)
				fe.Key = lit.String()
				fe.Line = lineAt(src, m.Name.StartOffset)
				fe.Msg = fmt.Sprintf("key %q: %v", fe.Key, err)
				break
			}
		}
	}
	return fe
}

// findKey returns the offset of the first member named k anywhere under
// v, and the value holding it; -1 if there is none.
func findKey(v *hujson.Value, k string) (int, *hujson.Value) {
	switch x := v.Value.(type) {
	case *hujson.Object:
		for i := range x.Members {
			m := &x.Members[i]
			if lit, ok := m.Name.Value.(hujson.Literal); ok && lit.String() == k {
				return m.Name.StartOffset, v
			}
		}
		for i := range x.Members {
			if off, p := findKey(&x.Members[i].Value, k); off >= 0 {
				return off, p
			}
		}
	case *hujson.Array:
		for i := range x.Elements {
			if off, p := findKey(&x.Elements[i], k); off >= 0 {
				return off, p
			}
		}
	}
	return -1, nil
}

// lineAt returns the 1-based line of byte offset off in src.
func lineAt(src []byte, off int) int {
	if off < 0 || off > len(src) {
		return 0
	}
	return 1 + bytes.Count(src[:off], []byte{'\n'})
}

// typeName says what JSON a Go type takes.
func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return fmt.Sprintf("a whole number 0-%d", uint64(1)<<(t.Bits())-1)
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// Keys returns the keys a config file for v (a struct or pointer to one)
// may hold, sorted.
func Keys(v any) []string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for f := range t.Fields() {
			tag := f.Tag.Get("json")
			name, _, _ := strings.Cut(tag, ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name == "" {
				name = f.Name
			}
			out = append(out, name)
		}
	}
	walk(t)
	slices.Sort(out)
	return out
}

// Duration is a time.Duration written in files as "30s", "5m" or "1h30m".
type Duration time.Duration

// MarshalText writes d as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses "30s" and the like.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration like 30s or 5m, not %q", b)
	}
	*d = Duration(v)
	return nil
}

// fieldsByKey returns the settable fields of the struct v points to, by
// config key (embedded structs flattened, as encoding/json does).
func fieldsByKey(v any) map[string]reflect.Value {
	out := map[string]reflect.Value{}
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		rv = rv.Elem()
	}
	if rv.Kind() != reflect.Struct {
		return out
	}
	var walk func(reflect.Value)
	walk = func(s reflect.Value) {
		t := s.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(s.Field(i))
				continue
			}
			if name == "" {
				name = f.Name
			}
			out[name] = s.Field(i)
		}
	}
	walk(rv)
	return out
}

// CopyKeys sets the settings keys of dst to their values in src, both
// pointers to the same config type: a reload keeps what the command line
// set at start this way.
func CopyKeys(dst, src any, keys []string) {
	d, s := fieldsByKey(dst), fieldsByKey(src)
	for _, k := range keys {
		if dv, ok := d[k]; ok {
			if sv, ok := s[k]; ok && dv.CanSet() {
				dv.Set(sv)
			}
		}
	}
}

// ChangedKeys returns the keys whose settings differ between a and b,
// pointers to the same config type, sorted.
func ChangedKeys(a, b any) []string {
	av, bv := fieldsByKey(a), fieldsByKey(b)
	var out []string
	for k, x := range av {
		if y, ok := bv[k]; ok && !reflect.DeepEqual(x.Interface(), y.Interface()) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
