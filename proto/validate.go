package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"reflect"
	"strings"
	"sync"

	"github.com/go-playground/validator/v10"
)

var (
	validateOnce sync.Once
	validate     *validator.Validate
)

// Validator returns the one validator instance the project shares: required
// structs enabled, fields named by their JSON names, and boardlink's own
// rules (argv, envkey) registered.
func Validator() *validator.Validate {
	validateOnce.Do(func() {
		v := validator.New(validator.WithRequiredStructEnabled())
		v.RegisterTagNameFunc(func(f reflect.StructField) string {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				return ""
			}
			if name == "" {
				return f.Name
			}
			return name
		})
		must(v.RegisterValidation("argv", func(fl validator.FieldLevel) bool {
			argv, ok := fl.Field().Interface().([]string)
			if !ok || len(argv) == 0 || argv[0] == "" {
				return false
			}
			for _, a := range argv {
				if strings.IndexByte(a, 0) >= 0 {
					return false
				}
			}
			return true
		}))
		must(v.RegisterValidation("envkey", func(fl validator.FieldLevel) bool {
			k := fl.Field().String()
			return k != "" && !strings.ContainsAny(k, "=\x00")
		}))
		must(v.RegisterValidation("boardpath", func(fl validator.FieldLevel) bool {
			return IsBoardPath(fl.Field().String())
		}))
		v.RegisterStructValidation(func(sl validator.StructLevel) {
			p := sl.Current().Interface().(ExecStartParams)
			ids := map[uint32]string{}
			for _, s := range []struct {
				id   uint32
				name string
			}{{p.Stdin, "stdin"}, {p.Stdout, "stdout"}, {p.Stderr, "stderr"}} {
				if s.id == 0 {
					continue
				}
				if _, dup := ids[s.id]; dup {
					sl.ReportError(s.id, s.name, s.name, "unique_stream", "")
				}
				ids[s.id] = s.name
			}
		}, ExecStartParams{})
		validate = v
	})
	return validate
}

// IsBoardPath reports whether p is absolute and clean, the only form file
// requests accept: a path that needs cleaning is refused, not interpreted.
func IsBoardPath(p string) bool {
	return strings.HasPrefix(p, "/") && path.Clean(p) == p && !strings.ContainsRune(p, 0)
}

func must(err error) {
	if err != nil {
		panic(err) // a rule that does not register is a programming error
	}
}

// Validate checks v against its validate tags and returns an invalid_params
// error naming every failed field, or nil.
func Validate(v any) *Error {
	err := Validator().Struct(v)
	if err == nil {
		return nil
	}
	var ves validator.ValidationErrors
	if !errors.As(err, &ves) {
		return Errorf(ReasonInternal, "validate: %v", err)
	}
	fields := make([]FieldError, 0, len(ves))
	for _, fe := range ves {
		fields = append(fields, FieldError{
			Field:   fieldPath(fe.Namespace()),
			Rule:    fe.Tag(),
			Param:   fe.Param(),
			Message: ruleMessage(fe),
		})
	}
	return invalidParams(fields)
}

// fieldPath drops the struct name validator puts first: "ExecStartParams.argv[0]" -> "argv[0]".
func fieldPath(ns string) string {
	if _, rest, ok := strings.Cut(ns, "."); ok {
		return rest
	}
	return ns
}

func ruleMessage(fe validator.FieldError) string {
	switch fe.Tag() {
	case "required":
		return "is required"
	case "min":
		return "must be at least " + fe.Param()
	case "max":
		return "must be at most " + fe.Param()
	case "oneof":
		return "must be one of: " + fe.Param()
	case "argv":
		return "must be a non-empty list whose first element is non-empty and no element holds a NUL byte"
	case "envkey":
		return "must be non-empty and hold neither '=' nor NUL"
	case "excludes":
		return "must not contain " + fmt.Sprintf("%q", fe.Param())
	case "boardpath":
		return "must be an absolute, clean path (no \".\" or \"..\" elements, no trailing slash, no NUL)"
	case "len":
		return "must have length " + fe.Param()
	case "hexadecimal":
		return "must be hexadecimal"
	case "lowercase":
		return "must be lowercase"
	case "url":
		return "must be a URL"
	case "startswith":
		return "must start with " + fmt.Sprintf("%q", fe.Param())
	case "unique_stream":
		return "names a stream already used by another field"
	}
	return "fails rule " + fe.Tag()
}

// InvalidField is the invalid_params error for one field that fails a check
// made beyond the validate tags (a cwd that is not a directory, say).
func InvalidField(field, rule, format string, args ...any) *Error {
	return invalidParams([]FieldError{{Field: field, Rule: rule, Message: fmt.Sprintf(format, args...)}})
}

func invalidParams(fields []FieldError) *Error {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.Field
	}
	return &Error{
		Code:    CodeInvalidParams,
		Message: "invalid params: " + strings.Join(names, ", "),
		Data:    &ErrorData{Reason: ReasonInvalidParams, Fields: fields},
	}
}

// DecodeParams decodes params strictly into v (a pointer to a params
// struct) and validates it. Absent or null params decode as {}. Unknown
// fields and fields of the wrong type are invalid params naming the field.
func DecodeParams(params json.RawMessage, v any) *Error {
	if len(params) > 0 && !bytes.Equal(bytes.TrimSpace(params), []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(params))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return decodeFieldError(err)
		}
		if dec.More() {
			return invalidParams([]FieldError{{Field: "(params)", Rule: "json", Message: "trailing data after params"}})
		}
	}
	return Validate(v)
}

func decodeFieldError(err error) *Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "(params)"
		}
		return invalidParams([]FieldError{{Field: field, Rule: "type", Param: te.Type.String(),
			Message: fmt.Sprintf("must be %s, not %s", jsonType(te.Type), te.Value)}})
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return invalidParams([]FieldError{{Field: strings.Trim(name, `"`), Rule: "unknown",
			Message: "is not a field of this method"}})
	}
	return invalidParams([]FieldError{{Field: "(params)", Rule: "json", Message: err.Error()}})
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return t.String()
}
