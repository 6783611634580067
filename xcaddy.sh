#!/usr/bin/env bash
# Builds a Caddy binary with this plugin (./caddy) and runs Caddyfile.example.
#
#   ./xcaddy.sh build   build ./caddy from this checkout, if it changed
#   ./xcaddy.sh run     the same, then serve Caddyfile.example on http://localhost:8080
#
# Needs only Go and the Go module proxy: xcaddy itself runs through `go run`.
# Versions are pinned so every build is the same; override CADDY_VERSION to try
# another Caddy release.
#
# A build takes a while even when nothing changed (xcaddy makes a fresh module
# and links a 50 MB binary), so ./caddy is reused while its inputs are those it
# was built from: the plugin's non-test sources, go.mod, go.sum, this script,
# the pinned versions and the Go toolchain. Their hash is kept in
# .xcaddy-stamp (git-ignored). Delete ./caddy to force a build.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"
XCADDY_VERSION="v0.4.5"
MODULE="$(go list -m)"
STAMP=.xcaddy-stamp

# The module is pinned to v0.0.0 and replaced by this checkout: without a version
# xcaddy asks the module proxy for the latest release of a module that is not
# published, and a proxy that answers 403 (not 404) makes that fatal.
build() {
	go run "github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}" build "${CADDY_VERSION}" \
		--output ./caddy \
		--with "${MODULE}@v0.0.0=."
}

sha256() {
	if command -v sha256sum >/dev/null 2>&1; then sha256sum; else shasum -a 256; fi
}

# inputs_hash hashes what the binary is made of: the names, sizes and contents
# of the Go sources that are not tests (bench/, testdata/ and web/ are not part
# of it), go.mod, go.sum and this script, plus the versions and the toolchain.
inputs_hash() {
	local f
	{
		echo "caddy ${CADDY_VERSION} xcaddy ${XCADDY_VERSION}"
		go version
		go env GOOS GOARCH CGO_ENABLED GOFLAGS
		env | grep '^XCADDY_' | LC_ALL=C sort || true
		find . \( -name .git -o -path ./bench -o -name testdata -o -path ./web \) -prune -o \
			-type f \( -name '*.go' -o -path './momentolocal/*' -o -name go.mod -o -name go.sum -o -path ./xcaddy.sh \) \
			! -name '*_test.go' -print0 | LC_ALL=C sort -z |
			while IFS= read -r -d '' f; do
				printf '\n%s %s\n' "$f" "$(wc -c <"$f")"
				cat -- "$f"
			done
	} | sha256 | cut -d' ' -f1
}

# build_if_changed builds ./caddy unless it exists, is the one the stamp was
# written for (nothing replaced it since), and the inputs hash the same.
build_if_changed() {
	local want
	want="$(inputs_hash)"
	if [ -x ./caddy ] && [ -f "$STAMP" ] && [ ! ./caddy -nt "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
		echo "xcaddy.sh: ./caddy is up to date (sources and versions unchanged since its build); delete it to force a build" >&2
		return
	fi
	rm -f "$STAMP"
	build
	echo "$want" >"$STAMP"
}

case "${1:-}" in
build)
	build_if_changed
	;;
run)
	build_if_changed
	# With a Momento key in the environment, serve real Momento; otherwise the
	# embedded backend. Caddyfile.example imports the matching snippets.
	if [ -n "${MOMENTO_API_KEY:-}" ] && [ -z "${MOMENTO_BACKEND:-}" ]; then
		export MOMENTO_BACKEND=momento
	fi
	echo "xcaddy.sh: serving Caddyfile.example on http://localhost:8080 (backend: ${MOMENTO_BACKEND:-local})" >&2
	exec ./caddy run --config Caddyfile.example --adapter caddyfile
	;;
*)
	echo "usage: $0 build|run" >&2
	exit 2
	;;
esac
