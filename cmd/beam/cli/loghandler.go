package cli

import (
	"context"
	"log/slog"
	"slices"
)

// componentKey is the attribute naming the part of Beam that logs.
const componentKey = "component"

// componentHandler keeps one component attribute per log line. Loggers
// are derived in layers, each naming itself (beam server's edge node, its
// engine, the engine's bind), and a text handler would print every layer's
// component=; this one joins them into one path, dropping repeats:
// component=edge-node/engine/netstack/bind. It must see every With before
// the text handler does, so it keeps the attributes and builds the inner
// handler itself.
type componentHandler struct {
	base  slog.Handler // without any With
	path  []string     // components, outermost first
	attrs []slog.Attr  // other With attributes, in order
	inner slog.Handler // base with component and attrs
}

func newComponentHandler(base slog.Handler) *componentHandler {
	return &componentHandler{base: base, inner: base}
}

func (h *componentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *componentHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.inner.Handle(ctx, r)
}

func (h *componentHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &componentHandler{base: h.base, path: h.path, attrs: h.attrs}
	for _, a := range as {
		if a.Key == componentKey && a.Value.Kind() == slog.KindString {
			if c := a.Value.String(); c != "" && !slices.Contains(n.path, c) {
				n.path = append(slices.Clip(n.path), c)
			}
			continue
		}
		n.attrs = append(slices.Clip(n.attrs), a)
	}
	n.inner = n.base
	all := n.attrs
	if len(n.path) > 0 {
		p := n.path[0]
		for _, c := range n.path[1:] {
			p += "/" + c
		}
		all = append([]slog.Attr{slog.String(componentKey, p)}, n.attrs...)
	}
	if len(all) > 0 {
		n.inner = n.base.WithAttrs(all)
	}
	return n
}

// WithGroup ends the joining: attributes after it belong to the group.
func (h *componentHandler) WithGroup(name string) slog.Handler {
	return h.inner.WithGroup(name)
}
