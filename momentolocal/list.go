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
