#!/usr/bin/env bash
# Benchmarks the gateway against calling the upstream directly, stock Caddy's
# reverse_proxy (same Caddy version, equivalent hand-written config) and nginx,
# all on 127.0.0.1, side by side in one run. See BENCHMARKS.md.
#
#   bench/run.sh                  build what is needed, run every workload, print
#                                 the table of medians (also bench/out/results.md)
#   bench/run.sh profile [stock]  CPU, allocation and heap profiles of the gateway
#                                 (or of stock Caddy) under GET 100 B at 256 conns
#                                 (see PROFILE_WORKLOAD), in bench/out/
#
# Workloads: get100 (GET, 100-byte value), put1k (PUT, 1 KiB), get1m (GET,
# 1 MiB value), breaker (the gateway's answers while a region's breaker is
# open; 503 is the expected answer), cached (GET 100 B answered from the
# gateway's local_cache, without the upstream). Targets: direct (wrk straight at the
# upstream), gateway, stock, nginx; and for the breaker workload only, floor:
# stock Caddy answering the same 503 with `respond` (bench/floor.Caddyfile),
# the least any answer through Caddy can cost.
#
# The proxy under test runs alone on CPU $PROXY_CPU; wrk and the upstream share
# CPU $LOAD_CPU (taskset). Each measurement starts the proxy afresh, warms it
# up with $WARMUP of the same load, then measures $DURATION: requests/s,
# latency, the proxy's CPU time per request (utime+stime from
# /proc/<pid>/stat), new upstream connections per 1,000 requests (counted by
# the upstream) and the proxy's peak RSS (VmHWM). Every round runs the targets
# (and the workloads) in a rotated order; the table shows medians.
#
# Knobs (environment):
#   DURATION=10s  ROUNDS=3  CONNS="32 256"  WORKLOADS="get100 put1k get1m breaker"
#   TARGETS="direct gateway stock nginx floor"  WARMUP=2s  THREADS=2
#   BASE_PORT=18400 (uses BASE_PORT+1 … +9)  PROXY_CPU=0  LOAD_CPU=1
#   SKIP_BUILD=1 reuses the Caddy binaries in bench/out/ (no ./xcaddy.sh build)
#   NICE=-10  scheduling priority of the proxy, wrk and the upstream (as root), so
#             that other work on the machine (builds, tests) disturbs less
#   QUIET_WAIT=30  before each measurement, wait up to this many seconds for a
#             second in which other processes use < QUIET_PCT=20 % of a CPU
#   OTHER_MAX=25 TRIES=3  a measurement during which other processes used more
#             than OTHER_MAX % of a CPU is taken again, up to TRIES times in all,
#             and the quietest kept; the table shows "other CPU %"
#   PROFILE_WORKLOAD=get100 (or get1m, breaker)  PROFILE_CONNS=256  for profile mode
# Quick smoke run: DURATION=2s ROUNDS=1 WARMUP=1s bench/run.sh
#
# Needs Linux with 2 CPUs, Go, and wrk, nginx, taskset and curl
# (apt-get install wrk nginx util-linux curl; as root, missing ones are
# installed here); root also for NICE.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
BENCH="$ROOT/bench"
OUT="$BENCH/out"
mkdir -p "$OUT"

MODE="${1:-bench}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-32 256}"
WORKLOADS="${WORKLOADS:-get100 put1k get1m breaker}"
TARGETS="${TARGETS:-direct gateway stock nginx floor}"
WARMUP="${WARMUP:-2s}"
THREADS="${THREADS:-2}"
BASE_PORT="${BASE_PORT:-18400}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
NICE="${NICE:--10}"
QUIET_WAIT="${QUIET_WAIT:-30}"
QUIET_PCT="${QUIET_PCT:-20}"
OTHER_MAX="${OTHER_MAX:-25}"
TRIES="${TRIES:-3}"
CADDY_VERSION="v2.11.9"
XCADDY_VERSION="v0.4.5"

# Not a secret: the upstream stand-in's own token.
export MOMENTO_TOKEN="${MOMENTO_TOKEN:-bench-token-not-a-secret}"

export BENCH_UP_PORT=$((BASE_PORT + 1))
export BENCH_GW_PORT=$((BASE_PORT + 2))
export BENCH_GW_BREAKER_PORT=$((BASE_PORT + 3))
export BENCH_DEAD_PORT=$((BASE_PORT + 4)) # nothing listens here
export BENCH_STOCK_PORT=$((BASE_PORT + 5))
export BENCH_NGINX_PORT=$((BASE_PORT + 6))
export BENCH_GW_ADMIN_PORT=$((BASE_PORT + 7))
export BENCH_STOCK_ADMIN_PORT=$((BASE_PORT + 8))
export BENCH_FLOOR_PORT=$((BASE_PORT + 9))
export BENCH_GW_CACHE_PORT=$((BASE_PORT + 10))
# Caddy's data and config directories stay under bench/out.
export XDG_DATA_HOME="$OUT/xdg-data" XDG_CONFIG_HOME="$OUT/xdg-config"

CLK_TCK="$(getconf CLK_TCK)"
# PRIO prefixes every process the bench runs under load (a raised priority
# needs root; without it they run at the default priority).
PRIO=()
if [ "$NICE" != 0 ] && [ "$(id -u)" -eq 0 ]; then
	PRIO=(nice -n "$NICE")
fi
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# seconds turns a wrk duration (10s, 2m, 1h or plain seconds) into seconds.
seconds() {
	case "$1" in
	*s) echo "${1%s}" ;;
	*m) echo $((${1%m} * 60)) ;;
	*h) echo $((${1%h} * 3600)) ;;
	*) echo "$1" ;;
	esac
}

# ---------------------------------------------------------------- processes

PIDS=()
cleanup() {
	local pid
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# forget drops a pid from PIDS once it has been stopped.
forget() {
	local keep=() p
	for p in "${PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	PIDS=("${keep[@]}")
}

stop() {
	local pid="$1" i
	kill "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	forget "$pid"
}

port_free() {
	! ss -Htln "sport = :$1" | grep -q .
}

# wait_http waits (at most 10 s) until something answers HTTP on the port.
wait_http() {
	local port="$1" pid="$2" i
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true)" != 000 ]; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# ------------------------------------------------------------------- builds

install_packages() {
	local missing=()
	command -v wrk >/dev/null 2>&1 || missing+=(wrk)
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
	command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
	command -v curl >/dev/null 2>&1 || missing+=(curl)
	[ "${#missing[@]}" -eq 0 ] && return
	[ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
	log "installing ${missing[*]} from Debian packages"
	# Never let the nginx package start its own service (port 80).
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		made_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$OUT/apt.log" 2>&1 ||
		{
			timeout 300 apt-get update -qq >>"$OUT/apt.log" 2>&1
			DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$OUT/apt.log" 2>&1
		} || { [ "$made_policy" = 1 ] && rm -f "$policy"; die "apt-get install failed: see $OUT/apt.log"; }
	[ "$made_policy" = 1 ] && rm -f "$policy"
	return 0
}

build() {
	install_packages
	command -v nginx >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
	if [ "${SKIP_BUILD:-}" != 1 ]; then
		log "building the gateway: ./xcaddy.sh build"
		timeout 1200 ./xcaddy.sh build >"$OUT/build-gateway.log" 2>&1 || die "./xcaddy.sh build failed: see $OUT/build-gateway.log"
		cp ./caddy "$OUT/caddy-gateway"
		# What was built: the commit, and whether the gateway's code differed from it.
		{
			printf 'commit %s' "$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
			git diff --quiet HEAD -- . ':!bench' ':!*_test.go' 2>/dev/null || printf ' with uncommitted changes'
			git ls-files --others --exclude-standard -- '*.go' ':!bench' ':!*_test.go' 2>/dev/null | grep -q . &&
				printf ' (and untracked .go files)'
			echo
		} >"$OUT/caddy-gateway.commit"
		if ! "$OUT/caddy-stock" version 2>/dev/null | grep -q "^$CADDY_VERSION "; then
			log "building stock Caddy $CADDY_VERSION (no plugins)"
			timeout 1200 go run "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION" build "$CADDY_VERSION" \
				--output "$OUT/caddy-stock" >"$OUT/build-stock.log" 2>&1 || die "stock Caddy build failed: see $OUT/build-stock.log"
		fi
	fi
	go build -o "$OUT/upstream" ./bench/upstream
	go build -o "$OUT/report" ./bench/report
	local b
	for b in caddy-gateway caddy-stock upstream report; do
		[ -x "$OUT/$b" ] || die "$OUT/$b is missing (run without SKIP_BUILD=1)"
	done
	"$OUT/caddy-gateway" list-modules 2>/dev/null | grep -qx http.handlers.momento || die "$OUT/caddy-gateway lacks http.handlers.momento"
}

# ------------------------------------------------------------------ servers

UP_PID=""
start_upstream() {
	port_free "$BENCH_UP_PORT" || die "port $BENCH_UP_PORT is taken (set BASE_PORT)"
	"${PRIO[@]}" taskset -c "$LOAD_CPU" "$OUT/upstream" -addr "127.0.0.1:$BENCH_UP_PORT" -token "$MOMENTO_TOKEN" \
		-small 100 -large 1048576 >"$OUT/upstream.log" 2>&1 &
	UP_PID=$!
	PIDS+=("$UP_PID")
	wait_http "$BENCH_UP_PORT" "$UP_PID" || die "the upstream did not start: see $OUT/upstream.log"
}

# start_proxy starts a target pinned to PROXY_CPU and sets PROXY_PID.
PROXY_PID=""
start_proxy() {
	local target="$1" port
	case "$target" in
	gateway)
		port_free "$BENCH_GW_PORT" && port_free "$BENCH_GW_BREAKER_PORT" && port_free "$BENCH_GW_ADMIN_PORT" ||
			die "a gateway port is taken"
		"${PRIO[@]}" taskset -c "$PROXY_CPU" "$OUT/caddy-gateway" run --config "$BENCH/gateway.Caddyfile" --adapter caddyfile \
			>"$OUT/gateway.log" 2>&1 &
		port="$BENCH_GW_PORT"
		;;
	stock)
		port_free "$BENCH_STOCK_PORT" && port_free "$BENCH_STOCK_ADMIN_PORT" || die "a stock Caddy port is taken"
		"${PRIO[@]}" taskset -c "$PROXY_CPU" "$OUT/caddy-stock" run --config "$BENCH/stock.Caddyfile" --adapter caddyfile \
			>"$OUT/stock.log" 2>&1 &
		port="$BENCH_STOCK_PORT"
		;;
	floor)
		port_free "$BENCH_FLOOR_PORT" || die "port $BENCH_FLOOR_PORT is taken"
		"${PRIO[@]}" taskset -c "$PROXY_CPU" "$OUT/caddy-stock" run --config "$BENCH/floor.Caddyfile" --adapter caddyfile \
			>"$OUT/floor.log" 2>&1 &
		port="$BENCH_FLOOR_PORT"
		;;
	nginx)
		port_free "$BENCH_NGINX_PORT" || die "port $BENCH_NGINX_PORT is taken"
		local dir="$OUT/nginx"
		mkdir -p "$dir"
		sed -e "s|@OUT@|$dir|g" -e "s|@UP_PORT@|$BENCH_UP_PORT|g" -e "s|@NGINX_PORT@|$BENCH_NGINX_PORT|g" \
			-e "s|@TOKEN@|$MOMENTO_TOKEN|g" "$BENCH/nginx.conf" >"$dir/nginx.conf"
		"${PRIO[@]}" taskset -c "$PROXY_CPU" nginx -p "$dir" -c "$dir/nginx.conf" >"$OUT/nginx.log" 2>&1 &
		port="$BENCH_NGINX_PORT"
		;;
	*) die "unknown target $target" ;;
	esac
	PROXY_PID=$!
	PIDS+=("$PROXY_PID")
	wait_http "$port" "$PROXY_PID" || die "$target did not start: see $OUT/$target.log"
}

# ---------------------------------------------------------------- measuring

# procs lists a process and its children (nginx's workers).
procs() {
	echo "$1"
	pgrep -P "$1" 2>/dev/null || true
}

# cpu_ticks sums utime+stime of a process and its children.
cpu_ticks() {
	local p total=0 t
	for p in $(procs "$1"); do
		# Fields after "(comm) ": state is $1, utime $12, stime $13.
		t="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')" || t=0
		total=$((total + ${t:-0}))
	done
	echo "$total"
}

# peak_rss_kib sums VmHWM of a process and its children.
peak_rss_kib() {
	local p total=0 k
	for p in $(procs "$1"); do
		k="$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null)" || k=0
		total=$((total + ${k:-0}))
	done
	echo "$total"
}

# upstream_stats prints the upstream's counters: new connections, requests.
upstream_stats() {
	curl -s --max-time 5 "http://127.0.0.1:$BENCH_UP_PORT/stats" |
		sed -n 's/.*"new_conns":\([0-9]*\).*"requests":\([0-9]*\).*/\1 \2/p'
}

# run_wrk runs wrk, bounded in time, and writes its output to $1.
run_wrk() {
	local outfile="$1" duration="$2" conns="$3" url="$4"
	shift 4
	local limit=$(($(seconds "$duration") + 30))
	# --foreground keeps wrk in this process group, so an interrupt reaches it.
	timeout --foreground -k 5 "$limit" "${PRIO[@]}" taskset -c "$LOAD_CPU" wrk -t"$THREADS" -c"$conns" -d"$duration" --timeout 5s --latency \
		"$@" "$url" >"$outfile" 2>&1 || log "wrk exited $? (see $outfile)"
}

# parse_wrk prints: rps p50_ms p99_ms requests non2xx socket_errors.
parse_wrk() {
	awk '
	function ms(v) {
		if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
		if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
		if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
		if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
		return v + 0
	}
	/^Requests\/sec:/ { rps = $2 }
	/ requests in / { reqs = $1 }
	/^ +50%/ { p50 = ms($2) }
	/^ +99%/ { p99 = ms($2) }
	/Non-2xx or 3xx responses:/ { non2xx = $NF }
	/Socket errors:/ { gsub(/,/, ""); sockerr = $4 + $6 + $8 + $10 }
	END {
		if (rps == "") { print "-", "-", "-", 0, 0, 0; exit }
		printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx + 0, sockerr + 0
	}' "$1"
}

# url_for prints the URL wrk targets for a workload and target.
url_for() {
	local workload="$1" target="$2" port
	case "$target" in
	direct) port="$BENCH_UP_PORT" ;;
	gateway) port="$BENCH_GW_PORT" ;;
	stock) port="$BENCH_STOCK_PORT" ;;
	nginx) port="$BENCH_NGINX_PORT" ;;
	esac
	case "$workload" in
	get100) echo "http://127.0.0.1:$port/cache/bench?key=small" ;;
	put1k) echo "http://127.0.0.1:$port/cache/bench?key=small&ttl_seconds=60" ;;
	get1m) echo "http://127.0.0.1:$port/cache/bench?key=large" ;;
	cached) echo "http://127.0.0.1:$BENCH_GW_CACHE_PORT/cache/bench?key=small" ;;
	breaker)
		if [ "$target" = floor ]; then
			echo "http://127.0.0.1:$BENCH_FLOOR_PORT/cache/bench?key=small"
		else
			echo "http://127.0.0.1:$BENCH_GW_BREAKER_PORT/cache/bench?key=small"
		fi
		;;
	esac
}

# busy_ticks prints the CPU time spent by everything on the machine, all
# CPUs: user, nice, system and steal (interrupts are not counted to anyone).
busy_ticks() {
	awk '/^cpu / {print $2 + $3 + $4 + $9}' /proc/stat
}

# own_ticks prints the CPU time of the bench itself: this shell and every
# child it has reaped (wrk, curl, …), the upstream, and the proxy $1 if any.
own_ticks() {
	local t
	t="$(sed 's/^.*) //' "/proc/$$/stat" | awk '{print $12 + $13 + $14 + $15}')"
	t=$((t + $(cpu_ticks "$UP_PID")))
	[ -n "${1:-}" ] && t=$((t + $(cpu_ticks "$1")))
	echo "$t"
}

# wait_quiet waits (at most QUIET_WAIT s) for a second in which processes
# other than the bench's use less than QUIET_PCT % of a CPU.
wait_quiet() {
	local pid="${1:-}" deadline=$((SECONDS + QUIET_WAIT)) b0 o0 pct
	while :; do
		b0="$(busy_ticks)"
		o0="$(own_ticks "$pid")"
		sleep 1
		pct=$(((($(busy_ticks) - b0) - ($(own_ticks "$pid") - o0)) * 100 / CLK_TCK))
		[ "$pct" -lt "$QUIET_PCT" ] && return 0
		if [ "$SECONDS" -ge "$deadline" ]; then
			log "  the machine is busy: other processes use ${pct} % of a CPU; measuring anyway"
			return 0
		fi
	done
}

# measure runs one workload against one target and appends a line to
# raw.tsv. When other processes used more than OTHER_MAX % of a CPU during
# the measurement, it is taken again (TRIES in all) and the quietest kept.
measure() {
	local try best="" best_other=""
	for ((try = 1; try <= TRIES; try++)); do
		measure_once "$@"
		if [ -z "$best" ] || [ "$OTHER_PCT" -lt "$best_other" ]; then
			best="$LINE" best_other="$OTHER_PCT"
		fi
		[ "$OTHER_PCT" -le "$OTHER_MAX" ] && break
		[ "$try" -lt "$TRIES" ] && log "  other processes used ${OTHER_PCT} % of a CPU during the run: measuring again"
	done
	printf '%s\n' "$best" >>"$OUT/raw.tsv"
}

# measure_once sets LINE (the raw.tsv line) and OTHER_PCT.
LINE="" OTHER_PCT=0
measure_once() {
	local round="$1" workload="$2" conns="$3" target="$4"
	local url args=() pid="" tag="r$round-$workload-c$conns-$target"
	url="$(url_for "$workload" "$target")"
	[ "$workload" = put1k ] && args+=(-s "$BENCH/put.lua")
	[ "$target" = direct ] && args+=(-H "Authorization: $MOMENTO_TOKEN")

	if [ "$target" != direct ]; then
		start_proxy "$target"
		pid="$PROXY_PID"
	fi
	if [ "$workload" = breaker ] && [ "$target" = gateway ]; then
		# One refused connection opens the breaker (failures 1).
		local first second
		first="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url" || true)"
		second="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$url" || true)"
		[ "$second" = 503 ] || log "warning: breaker not open after priming ($first, then $second)"
	fi
	log "round $round: $workload, $conns conns, $target"
	wait_quiet "$pid"
	run_wrk "$OUT/runs/$tag.warmup.txt" "$WARMUP" "$conns" "$url" "${args[@]}"

	local cpu0=- cpu1=- nc0 nc1 ur0 ur1 b0 o0 t0 b1 o1 t1
	[ -n "$pid" ] && cpu0="$(cpu_ticks "$pid")"
	read -r nc0 ur0 < <(upstream_stats)
	b0="$(busy_ticks)" o0="$(own_ticks "$pid")" t0="$(date +%s%N)"
	run_wrk "$OUT/runs/$tag.txt" "$DURATION" "$conns" "$url" "${args[@]}"
	b1="$(busy_ticks)" o1="$(own_ticks "$pid")" t1="$(date +%s%N)"
	[ -n "$pid" ] && cpu1="$(cpu_ticks "$pid")"
	read -r nc1 ur1 < <(upstream_stats)
	# Other processes' CPU during the run, in % of one CPU.
	OTHER_PCT=$(((b1 - b0 - (o1 - o0)) * 100 * 1000000000 / CLK_TCK / (t1 - t0)))
	[ "$OTHER_PCT" -lt 0 ] && OTHER_PCT=0

	local rss=- ticks=- newconns
	if [ -n "$pid" ]; then
		rss="$(peak_rss_kib "$pid")"
		ticks=$((cpu1 - cpu0))
		stop "$pid"
	fi
	# The second /stats call's own connection is not the proxy's.
	newconns=$((nc1 - nc0 - 1))
	local rps p50 p99 reqs non2xx sockerr
	read -r rps p50 p99 reqs non2xx sockerr < <(parse_wrk "$OUT/runs/$tag.txt")
	LINE="$(printf '%s\t' "$round" "$workload" "$conns" "$target" "$rps" "$p50" "$p99" "$reqs" "$non2xx" "$sockerr" \
		"$ticks" "$newconns" "$((ur1 - ur0))" "$rss" "$(seconds "$DURATION")")$OTHER_PCT"
	log "  $rps req/s, p99 ${p99} ms, non-2xx $non2xx, socket errors $sockerr, upstream new conns $newconns, other processes ${OTHER_PCT} % CPU"
}

# rotate prints the words of $2 rotated left by $1.
rotate() {
	local n="$1" words
	read -r -a words <<<"$2"
	local len="${#words[@]}" i
	for ((i = 0; i < len; i++)); do
		printf '%s ' "${words[$(((i + n) % len))]}"
	done
}

bench() {
	build
	mkdir -p "$OUT/runs"
	rm -f "$OUT/raw.tsv" "$OUT"/runs/*.txt
	echo "# round workload conns target rps p50_ms p99_ms requests non2xx socket_errors cpu_ticks new_upstream_conns upstream_requests peak_rss_kib seconds other_cpu_pct" >"$OUT/raw.tsv"
	start_upstream
	log "upstream on 127.0.0.1:$BENCH_UP_PORT; proxies on CPU $PROXY_CPU, wrk and upstream on CPU $LOAD_CPU"
	log "DURATION=$DURATION ROUNDS=$ROUNDS CONNS=\"$CONNS\" WORKLOADS=\"$WORKLOADS\" TARGETS=\"$TARGETS\" WARMUP=$WARMUP NICE=$NICE"
	port_free "$BENCH_DEAD_PORT" || die "port $BENCH_DEAD_PORT must stay closed (breaker workload): set BASE_PORT"
	local round workload conns target
	for ((round = 1; round <= ROUNDS; round++)); do
		for workload in $(rotate $((round - 1)) "$WORKLOADS"); do
			for conns in $CONNS; do
				for target in $(rotate $((round - 1)) "$TARGETS"); do
					# The breaker workload is the gateway's (and its floor's);
					# the floor answers nothing else.
					case "$workload:$target" in
					breaker:gateway | breaker:floor | cached:gateway) ;;
					breaker:* | cached:* | *:floor) continue ;;
					esac
					measure "$round" "$workload" "$conns" "$target"
				done
			done
		done
	done
	stop "$UP_PID"

	local header
	header="$(
		echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'); gateway built from $(cat "$OUT/caddy-gateway.commit" 2>/dev/null || echo 'an unknown commit')."
		echo "Machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)."
		echo "Command: \`DURATION=$DURATION ROUNDS=$ROUNDS CONNS=\"$CONNS\" WORKLOADS=\"$WORKLOADS\" TARGETS=\"$TARGETS\" WARMUP=$WARMUP NICE=$NICE bench/run.sh\`"
		echo "Versions: gateway and stock Caddy $CADDY_VERSION ($(go env GOVERSION)); $(nginx -v 2>&1 | sed 's/^nginx version: //'); $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')."
		echo "Proxy pinned to CPU $PROXY_CPU; wrk (-t$THREADS) and upstream pinned to CPU $LOAD_CPU. Each measurement: a fresh proxy, $WARMUP warm-up, $DURATION measured. Medians of $ROUNDS rounds; ratios are per-round, side by side. \"other CPU %\" is what processes outside the bench used during the run (100 = one CPU)."
	)"
	echo
	echo "$header" | sed 's/`//g'
	echo
	"$OUT/report" -raw "$OUT/raw.tsv" -md "$OUT/results.md" -header "$header" -clk_tck "$CLK_TCK"
	log "markdown: $OUT/results.md; raw data: $OUT/raw.tsv; wrk outputs: $OUT/runs/"
}

# profile takes a 10 s CPU profile, a 10 s allocation profile and then a
# heap snapshot of a proxy (gateway by default) under PROFILE_WORKLOAD
# (get100) at PROFILE_CONNS (256) connections.
profile() {
	local target="${1:-gateway}" admin bin
	case "$target" in
	gateway) admin="$BENCH_GW_ADMIN_PORT" bin="$OUT/caddy-gateway" ;;
	stock) admin="$BENCH_STOCK_ADMIN_PORT" bin="$OUT/caddy-stock" ;;
	*) die "profile: gateway or stock" ;;
	esac
	build
	mkdir -p "$OUT/runs"
	start_upstream
	start_proxy "$target"
	local url pconns="${PROFILE_CONNS:-256}" pworkload="${PROFILE_WORKLOAD:-get100}"
	case "$pworkload" in
	get100 | get1m) ;;
	breaker)
		[ "$target" = gateway ] || die "the breaker workload is the gateway's"
		curl -s -o /dev/null --max-time 10 "$(url_for breaker gateway)" || true
		;;
	*) die "PROFILE_WORKLOAD: get100, get1m or breaker" ;;
	esac
	local tag="$target"
	[ "$pworkload" = get100 ] || tag="$target-$pworkload"
	url="$(url_for "$pworkload" "$target")"
	log "profiling $target under $pworkload, $pconns conns"
	run_wrk "$OUT/runs/profile-$tag.warmup.txt" "$WARMUP" "$pconns" "$url"
	run_wrk "$OUT/runs/profile-$tag.txt" 16s "$pconns" "$url" &
	local wrk_pid=$!
	sleep 3
	curl -s --max-time 30 -o "$OUT/$tag.allocs.pprof" "http://127.0.0.1:$admin/debug/pprof/allocs?seconds=10" &
	local allocs_pid=$!
	curl -s --max-time 30 -o "$OUT/$tag.cpu.pprof" "http://127.0.0.1:$admin/debug/pprof/profile?seconds=10" ||
		die "CPU profile failed"
	wait "$allocs_pid" || die "allocation profile failed"
	curl -s --max-time 30 -o "$OUT/$tag.heap.pprof" "http://127.0.0.1:$admin/debug/pprof/heap" || die "heap profile failed"
	wait "$wrk_pid" || true
	stop "$PROXY_PID"
	stop "$UP_PID"
	parse_wrk "$OUT/runs/profile-$tag.txt" | awk '{printf "during profiling: %s req/s, p99 %s ms, non-2xx %s\n", $1, $3, $5}'
	{
		echo "== CPU, flat (go tool pprof -top)"
		go tool pprof -top -nodecount=35 "$bin" "$OUT/$tag.cpu.pprof" 2>&1
		echo
		echo "== CPU, cumulative (go tool pprof -top -cum)"
		go tool pprof -top -cum -nodecount=45 "$bin" "$OUT/$tag.cpu.pprof" 2>&1
		echo
		echo "== allocations over 10 s (go tool pprof -sample_index=alloc_space -top)"
		go tool pprof -sample_index=alloc_space -top -nodecount=30 "$bin" "$OUT/$tag.allocs.pprof" 2>&1
		echo
		echo "== allocations over 10 s (go tool pprof -sample_index=alloc_objects -top)"
		go tool pprof -sample_index=alloc_objects -top -nodecount=30 "$bin" "$OUT/$tag.allocs.pprof" 2>&1
		echo
		echo "== heap in use under load (go tool pprof -sample_index=inuse_space -top)"
		go tool pprof -sample_index=inuse_space -top -nodecount=20 "$bin" "$OUT/$tag.heap.pprof" 2>&1
	} | tee "$OUT/profile-$tag.txt"
	log "profiles: $OUT/$tag.cpu.pprof, $OUT/$tag.allocs.pprof; text: $OUT/profile-$tag.txt"
}

case "$MODE" in
bench) bench ;;
profile) profile "${2:-gateway}" ;;
*)
	echo "usage: $0 [profile [gateway|stock]]" >&2
	exit 2
	;;
esac
