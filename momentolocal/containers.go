package momentolocal

// links are the two pointers that put a T on a list.
type links[T any] struct {
	prev *T // towards the front: older
	next *T // towards the back: newer
}

// listed is the element type of a list: a pointer to T that gives its own
// links. The links live inside the element (an intrusive list), so putting
// an item or a message on a list allocates nothing, where container/list
// would allocate an Element (48 bytes) for each.
type listed[T any] interface {
	*T
	links() *links[T]
}

// list is a doubly linked list ordered by age: the oldest element at the
// front, the newest at the back. The store keeps one per shard in order of
// use, the topics one across all buffered messages in order of publishing.
// The zero value is an empty list. It is not safe for concurrent use.
type list[T any, P listed[T]] struct {
	front *T
	back  *T
}

// oldest returns the front element, or nil.
func (l *list[T, P]) oldest() P { return P(l.front) }

// newest returns the back element, or nil.
func (l *list[T, P]) newest() P { return P(l.back) }

// pushBack appends e, which must not be on a list, as the newest element.
func (l *list[T, P]) pushBack(e P) {
	ln := e.links()
	ln.prev, ln.next = l.back, nil
	if l.back != nil {
		P(l.back).links().next = (*T)(e)
	} else {
		l.front = (*T)(e)
	}
	l.back = (*T)(e)
}

// remove takes e, which must be on l, off it.
func (l *list[T, P]) remove(e P) {
	ln := e.links()
	if ln.prev != nil {
		P(ln.prev).links().next = ln.next
	} else {
		l.front = ln.next
	}
	if ln.next != nil {
		P(ln.next).links().prev = ln.prev
	} else {
		l.back = ln.prev
	}
	ln.prev, ln.next = nil, nil
}

// moveToBack makes e, which must be on l, the newest element.
func (l *list[T, P]) moveToBack(e P) {
	if l.back == (*T)(e) {
		return
	}
	l.remove(e)
	l.pushBack(e)
}

// newer returns the element after e, towards the back, or nil.
func newer[T any, P listed[T]](e P) P { return P(e.links().next) }

// older returns the element before e, towards the front, or nil.
func older[T any, P listed[T]](e P) P { return P(e.links().prev) }

// shrinkingMap is a map that gives back the memory of deleted entries. A Go
// map never shrinks, and under churn (eviction deleting, new keys coming)
// it grows further with the tombstones deletions leave: in TestMemoryBound
// that took a small item's map slot from about 50 to 130 bytes. Rebuilding
// the map once as many entries were deleted as remain keeps its memory in
// proportion to its entries, for an amortized copy of one entry per
// deletion.
type shrinkingMap[K comparable, V any] struct {
	m       map[K]V
	deleted int // since the map was last built
}

func newShrinkingMap[K comparable, V any]() shrinkingMap[K, V] {
	return shrinkingMap[K, V]{m: make(map[K]V)}
}

// delete removes k, rebuilding the map when deletions have caught up with
// the entries left. Small maps are left alone: their memory is small too.
func (s *shrinkingMap[K, V]) delete(k K) {
	delete(s.m, k)
	s.deleted++
	if s.deleted >= max(len(s.m), 256) {
		m := make(map[K]V, len(s.m))
		for k, v := range s.m {
			m[k] = v
		}
		s.m = m
		s.deleted = 0
	}
}
