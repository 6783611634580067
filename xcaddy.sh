#!/usr/bin/env bash
# Builds a Caddy binary with this plugin (./caddy) and runs Caddyfile.example.
#
#   ./xcaddy.sh build   build ./caddy from this checkout
#   ./xcaddy.sh run     build, then serve Caddyfile.example on http://localhost:8080
#
# Needs only Go and the Go module proxy: xcaddy itself runs through `go run`.
# Versions are pinned so every build is the same; override CADDY_VERSION to try
# another Caddy release.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"
XCADDY_VERSION="v0.4.5"
MODULE="$(go list -m)"

# The module is pinned to v0.0.0 and replaced by this checkout: without a version
# xcaddy asks the module proxy for the latest release of a module that is not
# published, and a proxy that answers 403 (not 404) makes that fatal.
build() {
	go run "github.com/caddyserver/xcaddy/cmd/xcaddy@${XCADDY_VERSION}" build "${CADDY_VERSION}" \
		--output ./caddy \
		--with "${MODULE}@v0.0.0=."
}

case "${1:-}" in
build)
	build
	;;
run)
	build
	# With a Momento key in the environment, serve real Momento; otherwise the
	# embedded backend. Caddyfile.example imports the matching snippet.
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
