package dispatcher

import "github.com/boardlink/boardlink/discovery"

// Remember caches rec as where id resolves, as a dial by id does: for
// tests of a cache entry gone stale.
func (r *Resolver) Remember(id string, rec discovery.Record) { r.remember(id, rec) }

// PartialPath is where Pull collects local before it is complete.
var PartialPath = partialPath
