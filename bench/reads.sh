#!/usr/bin/env bash
# Read-path benchmark (see bench/reads/main.go and BENCHMARKS.md): 200
# clients reading 10 hot keys through the gateway for 10 s, against the
# embedded backend playing a region with Momento's 100 operations a second,
# with the local cache, with coalescing only, and with both off.
#
#   bench/reads.sh                 all three modes
#   MODES=cache bench/reads.sh     one
set -euo pipefail
cd "$(dirname "$0")/.."
MODES="${MODES:-cache coalesce off}"
./xcaddy.sh build >/dev/null
mkdir -p bench/out
go build -o bench/out/reads ./bench/reads
for mode in $MODES; do
	READS=$mode ./caddy run --config bench/reads.Caddyfile --adapter caddyfile >/dev/null 2>&1 &
	pid=$!
	for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18499/config/ && break; sleep 0.1; done
	bench/out/reads -label "reads=$mode" "$@" || true
	kill "$pid"; wait "$pid" 2>/dev/null || true
done
