package momento

import (
	"path"
	"strconv"
)

// Route sends the caches whose names match a glob to one region.
type Route struct {
	// A glob on the cache name, as path.Match understands it: * matches any
	// run of characters, ? one, [a-z] a class. Example: "sessions-*".
	Cache string `json:"cache"`

	// The name of a configured region.
	Region string `json:"region"`
}

type compiledRoute struct {
	glob   string
	region *region
}

// globProblem returns why a cache glob is unusable, or "".
func globProblem(glob string) string {
	if glob == "" {
		return "cache glob is empty"
	}
	if _, err := path.Match(glob, ""); err != nil {
		return "cache glob " + strconv.Quote(glob) + " is malformed (check its [ ] classes and \\ escapes)"
	}
	return ""
}

// regionFor picks the region for a cache: the first matching route, else
// the default region; nil when neither applies.
func (h *Handler) regionFor(cache string) *region {
	for i := range h.routes {
		if ok, _ := path.Match(h.routes[i].glob, cache); ok {
			return h.routes[i].region
		}
	}
	return h.defaultRegion
}
