package daemon

import (
	"slices"
	"testing"
)

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"":                  nil,
		"a":                 {"a"},
		" a , b,,c ":        {"a", "b", "c"},
		"kube-system, ,x,,": {"kube-system", "x"},
	} {
		if got := SplitList(in); !slices.Equal(got, want) {
			t.Errorf("SplitList(%q) = %q, want %q", in, got, want)
		}
	}
}
