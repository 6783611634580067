#!/usr/bin/env bash
# Topic fan-out benchmark (see bench/topics/main.go and BENCHMARKS.md):
# N subscribers on one topic through the gateway, hub on and off, against
# the embedded backend playing a region with Momento's limits.
#
#   bench/topics.sh                      the whole table
#   N="1000" MODES="sse" HUBS="on" bench/topics.sh   one row
#
# Needs: Go (it builds ./caddy with ./xcaddy.sh build), ulimit -n above
# twice the largest N.
set -euo pipefail
cd "$(dirname "$0")/.."
NS="${N:-1000 10000}"
MODES="${MODES:-longpoll sse}"
HUBS="${HUBS:-on off}"
MESSAGES="${MESSAGES:-20}"

./xcaddy.sh build >/dev/null
go build -o bench/out/topics ./bench/topics 2>/dev/null || { mkdir -p bench/out && go build -o bench/out/topics ./bench/topics; }
ulimit -n 65536 2>/dev/null || true

for hub in $HUBS; do
	for mode in $MODES; do
		for n in $NS; do
			if [ "$mode" = sse ] && [ "$hub" = off ]; then continue; fi
			if [ "$mode" = sse ] && [ "$n" -gt 1000 ]; then continue; fi
			HUB=$hub ./caddy run --config bench/topics.Caddyfile --adapter caddyfile >/dev/null 2>&1 &
			pid=$!
			for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18489/config/ && break; sleep 0.1; done
			bench/out/topics -gateway http://127.0.0.1:18480 -admin=http://127.0.0.1:18489 -pid "$pid" \
				-n "$n" -mode "$mode" -messages "$MESSAGES" -label "hub=$hub" -steady="$([ "$hub" = on ] && echo true || echo false)" || true
			kill "$pid"; wait "$pid" 2>/dev/null || true
		done
	done
done
