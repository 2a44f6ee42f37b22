package dispatcher

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

// ErrBadSelector and ErrBadInventory are wrapped by the errors of a
// selector or an inventory file that cannot be read: the caller's mistake.
var (
	ErrBadSelector  = errors.New("bad selector")
	ErrBadInventory = errors.New("bad inventory")
)

// Selector picks boards by what they announce: the key "model" matches
// the model, any other key the label of that name. A board must match
// every pair; an empty Selector matches every board.
type Selector map[string]string

// ParseSelector reads KEY=VALUE pairs, as `boardlink rollout --select`
// takes them.
func ParseSelector(kvs []string) (Selector, error) {
	s := Selector{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w %q: want KEY=VALUE", ErrBadSelector, kv)
		}
		s[k] = v
	}
	return s, nil
}

// Match reports whether t has every pair of s.
func (s Selector) Match(t Target) bool {
	for k, v := range s {
		got, ok := t.Labels[k]
		if k == "model" {
			got, ok = t.Model, true
		}
		if !ok || got != v {
			return false
		}
	}
	return true
}

// String is the pairs, sorted: "model=imx8 rack=r1".
func (s Selector) String() string {
	pairs := make([]string, 0, len(s))
	for _, k := range slices.Sorted(maps.Keys(s)) {
		pairs = append(pairs, k+"="+s[k])
	}
	return strings.Join(pairs, " ")
}

// ReadInventory reads an inventory file: a JSON array of boards, each
// {"id", "address", "model", "labels"}, with an id and an address.
func ReadInventory(path string) ([]Target, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var inv []Target
	if err := json.Unmarshal(raw, &inv); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadInventory, path, err)
	}
	for i, t := range inv {
		if t.ID == "" || t.Address == "" {
			return nil, fmt.Errorf("%w %s: board %d: every board needs an id and an address", ErrBadInventory, path, i)
		}
	}
	return inv, nil
}

// Targets returns the boards sel matches among those of inventory and,
// with a Resolver, those it finds (an inventory entry wins over a board
// found with the same id), sorted by id; Found is what discovery saw. A
// failed discovery is an error only when there is no inventory to go on
// with.
func Targets(ctx context.Context, r *Resolver, inventory []Target, sel Selector) ([]Target, Found, error) {
	byID := map[string]Target{}
	for _, t := range inventory {
		byID[t.ID] = t
	}
	var found Found
	if r != nil {
		var err error
		found, err = r.Find(ctx)
		if err != nil && len(byID) == 0 {
			return nil, found, fmt.Errorf("looking for boards: %w", err)
		}
		for _, rec := range found.Boards {
			if _, ok := byID[rec.ID]; !ok {
				byID[rec.ID] = Target{ID: rec.ID, Address: rec.Address, Model: rec.Model, Labels: rec.Labels}
			}
		}
	}
	var out []Target
	for _, t := range byID {
		if sel.Match(t) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b Target) int { return cmp.Compare(a.ID, b.ID) })
	return out, found, nil
}
