package momentolocal

import (
	"slices"
	"testing"
)

type node struct {
	v  int
	ln links[node]
}

func (n *node) links() *links[node] { return &n.ln }

// values returns the list's values front to back, checking that walking
// back to front gives the same.
func values(t *testing.T, l *list[node, *node]) []int {
	t.Helper()
	var fwd, bwd []int
	for n := l.oldest(); n != nil; n = newer(n) {
		fwd = append(fwd, n.v)
	}
	for n := l.newest(); n != nil; n = older(n) {
		bwd = append(bwd, n.v)
	}
	slices.Reverse(bwd)
	if !slices.Equal(fwd, bwd) {
		t.Fatalf("front to back %v, back to front reversed %v", fwd, bwd)
	}
	return fwd
}

func TestList(t *testing.T) {
	var l list[node, *node]
	if l.oldest() != nil || l.newest() != nil {
		t.Fatal("zero list is not empty")
	}
	n := make([]*node, 5)
	for i := range n {
		n[i] = &node{v: i}
		l.pushBack(n[i])
	}
	for _, step := range []struct {
		do   func()
		want []int
	}{
		{func() {}, []int{0, 1, 2, 3, 4}},
		{func() { l.moveToBack(n[0]) }, []int{1, 2, 3, 4, 0}},
		{func() { l.moveToBack(n[0]) }, []int{1, 2, 3, 4, 0}}, // already newest
		{func() { l.moveToBack(n[3]) }, []int{1, 2, 4, 0, 3}},
		{func() { l.remove(n[1]) }, []int{2, 4, 0, 3}}, // front
		{func() { l.remove(n[3]) }, []int{2, 4, 0}},    // back
		{func() { l.remove(n[4]) }, []int{2, 0}},       // middle
		{func() { l.pushBack(n[1]) }, []int{2, 0, 1}},  // removed, then added again
		{func() { l.remove(n[2]); l.remove(n[0]); l.remove(n[1]) }, nil},
		{func() { l.pushBack(n[4]) }, []int{4}},
	} {
		step.do()
		if got := values(t, &l); !slices.Equal(got, step.want) {
			t.Fatalf("got %v, want %v", got, step.want)
		}
	}
	if n[1].ln != (links[node]{}) {
		t.Error("a removed element keeps its links")
	}
}
