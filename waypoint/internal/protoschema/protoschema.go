// Package protoschema checks that an xDS message sets only the fields an
// engine implements: the waypoint NACKs a configuration with any other
// field set rather than run it with that field silently ignored. The route
// engine (waypoint/router) and the RBAC engine (waypoint/rbac) each declare
// their supported subset as a Schema.
package protoschema

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// Schema is an engine's supported subset of a message tree.
type Schema struct {
	engine, root string
	fields       map[protoreflect.FullName]map[protoreflect.Name]bool
	leaves       map[protoreflect.FullName]bool
	maxDepth     int
	levels       int
}

// Options describe a Schema.
type Options struct {
	// Engine names the engine in errors ("route engine").
	Engine string
	// Root names the top-level message in error paths ("(route configuration)").
	Root string
	// Fields lists, per message type, the fields the engine implements.
	// Fields of message type are walked; their type must be listed here
	// or in Leaves.
	Fields map[protoreflect.FullName][]protoreflect.Name
	// Leaves are message types accepted whole (their content is checked by
	// the engine itself).
	Leaves map[protoreflect.FullName]bool
	// MaxDepth bounds the message nesting walked; deeper is refused.
	MaxDepth int
	// Levels is the depth the refusal names (default MaxDepth), for
	// engines whose own levels span several message levels.
	Levels int
}

// New indexes opts.
func New(opts Options) *Schema {
	s := &Schema{engine: opts.Engine, root: opts.Root, leaves: opts.Leaves, maxDepth: opts.MaxDepth, levels: opts.Levels,
		fields: make(map[protoreflect.FullName]map[protoreflect.Name]bool, len(opts.Fields))}
	if s.levels == 0 {
		s.levels = s.maxDepth
	}
	for msg, fields := range opts.Fields {
		set := make(map[protoreflect.Name]bool, len(fields))
		for _, f := range fields {
			set[f] = true
		}
		s.fields[msg] = set
	}
	return s
}

// Check reports the first set field of m the engine does not implement, or
// unknown fields (set by a newer schema), with its path.
func (s *Schema) Check(m protoreflect.Message) error { return s.check(m, "", 0) }

func (s *Schema) check(m protoreflect.Message, path string, depth int) error {
	name := m.Descriptor().FullName()
	if s.leaves[name] {
		return nil
	}
	if depth > s.maxDepth {
		return fmt.Errorf("%s: nesting deeper than %d levels", s.pathOrRoot(path), s.levels)
	}
	allowed, ok := s.fields[name]
	if !ok {
		return fmt.Errorf("%s: message type %s is not supported", s.pathOrRoot(path), name)
	}
	if unk := m.GetUnknown(); len(unk) > 0 {
		return fmt.Errorf("%s: unknown field(s) in %s (%d bytes): not supported", s.pathOrRoot(path), name, len(unk))
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fpath := JoinPath(path, string(fd.Name()))
		if !allowed[fd.Name()] {
			err = fmt.Errorf("%s: field is not supported by the waypoint %s", fpath, s.engine)
			return false
		}
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = s.check(l.Get(i).Message(), Index(fpath, i), depth+1)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				err = s.check(mv.Message(), fpath+"["+strconv.Quote(k.String())+"]", depth+1)
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = s.check(v.Message(), fpath, depth+1)
		}
		return err == nil
	})
	return err
}

func (s *Schema) pathOrRoot(p string) string {
	if p == "" {
		return s.root
	}
	return p
}

// JoinPath appends a field name to a field path.
func JoinPath(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

// Index formats a list element's path.
func Index(path string, i int) string {
	var b strings.Builder
	b.Grow(len(path) + 6)
	b.WriteString(path)
	b.WriteByte('[')
	b.WriteString(strconv.Itoa(i))
	b.WriteByte(']')
	return b.String()
}
