#!/usr/bin/env bash
# Starts ./xcaddy.sh run (Caddyfile.example, embedded backend) and runs every
# curl example between the README's <!-- smoke --> markers, checking that
# each output contains the lines marked `# => ` after it.
set -euo pipefail
cd "$(dirname "$0")/.."

# A server left on the port would answer in place of the one started here.
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:8080/; then
	echo "something already answers on 127.0.0.1:8080: stop it first" >&2
	exit 1
fi

log="$(mktemp)"
env -u MOMENTO_API_KEY -u MOMENTO_BACKEND ./xcaddy.sh run >"$log" 2>&1 &
pid=$!
cleanup() {
	kill "$pid" 2>/dev/null || true
	pkill -P "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT

# xcaddy.sh run builds first (cached after .ci/run's build): allow a few minutes.
for _ in $(seq 1 600); do
	if curl -s -o /dev/null http://localhost:8080/; then break; fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "xcaddy.sh run exited:" >&2
		cat "$log" >&2
		exit 1
	fi
	sleep 0.5
done
curl -s -o /dev/null http://localhost:8080/ || { echo "gateway did not come up" >&2; cat "$log" >&2; exit 1; }

block="$(sed -n '/<!-- smoke -->/,/<!-- \/smoke -->/p' README.md)"
[ -n "$block" ] || { echo "README.md has no <!-- smoke --> block" >&2; exit 1; }

passed=0
failed=0
output=""
cmd=""
while IFS= read -r line; do
	case "$line" in
	curl\ *)
		cmd="$line"
		output="$(bash -c "$cmd" 2>&1 || true)"
		;;
	"# => "*)
		want="${line#\# => }"
		if grep -qF -- "$want" <<<"$output"; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			printf 'FAIL: %s\n  wanted: %s\n  got:\n%s\n' "$cmd" "$want" "$output" >&2
		fi
		;;
	esac
done <<<"$block"

echo "smoke: $passed passed, $failed failed"
[ "$passed" -gt 0 ] && [ "$failed" -eq 0 ]

# Caddyfile.example answers only its own host names: a page that rebinds its
# DNS name to 127.0.0.1 sends its own Host and gets Caddy's empty answer, and
# nothing reaches the gateway.
rebound="$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -H 'Host: rebind.example:8080' \
	-X PUT --data-binary 'x' 'http://127.0.0.1:8080/cache/demo?key=rebound&ttl_seconds=60')"
echo "a foreign Host (want \"200 0\"): $rebound"
[ "$rebound" = "200 0" ]
stored="$(curl -s -o /dev/null -w '%{http_code}' 'http://localhost:8080/cache/demo?key=rebound')"
echo "its PUT stored nothing (want 404): $stored"
[ "$stored" = 404 ]

# The README's limits: Caddy's default max_header_size (16 KiB) bounds the
# request line and headers; past it Caddy answers 431.
long="$(head -c 24576 /dev/zero | tr '\0' k)"
status="$(curl -s -o /dev/null -w '%{http_code}' "http://localhost:8080/cache/demo?key=hello&pad=$long" || true)"
echo "a 24 KiB request line (want 431): $status"
[ "$status" = 431 ]

# An upload the region refuses before reading it (the embedded backend, like
# Momento, refuses key plus value over 5 MiB at once) must leave a keep-alive
# connection in step: the next request on it is answered as itself.
value="$(mktemp)"
head -c 5242880 /dev/zero | tr '\0' v >"$value"
rounds="$(for _ in $(seq 1 30); do
	curl -s -o /dev/null -w '%{http_code} ' -X PUT --data-binary @"$value" -H 'Expect:' 'http://127.0.0.1:8080/cache/c?key=big&ttl_seconds=60' \
		--next -s -o /dev/null -w '%{http_code}\n' -X DELETE 'http://127.0.0.1:8080/cache/c?key=other'
done | sort | uniq -c)"
rm -f "$value"
echo "early answers on a kept-alive connection (want 30 × \"413 204\"):"
echo "$rounds"
[ "$(awk '$2 == "413" && $3 == "204" { print $1 }' <<<"$rounds")" = 30 ]
