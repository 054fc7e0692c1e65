#!/usr/bin/env bash
# Throughput of IdempotencyLayer on MemoryStore relative to the same axum handler without it.
#
#   bash scripts/bench/run.sh
#
# Builds and starts examples/examples/bench_server.rs (bare handler on BARE_PORT, layered on
# LAYER_PORT), warms both up, then runs wrk against bare and layered alternately for three
# scenarios, ROUNDS times each (the order of bare and layered flips every round):
#   pass-through  no Idempotency-Key header: the layer passes the request through
#   unique-keys   a fresh key per request: every request is a first execution
#   same-key      one key, executed once before the run: every request is a replay
# and prints requests/sec and layered/bare per run and per scenario. wrk runs pinned to CPU 1
# and the server to CPU 0 when taskset is available. Raw wrk output is kept under
# target/bench/. The server is stopped on exit.
#
# The machine is shared (builds, tests): before each run the script waits, up to QUIET_WAIT
# seconds, for the other processes to use less than 5% of a CPU, and for each run it reports
# the CPU used by the server, by wrk and by everything else ("other", in CPUs). A run with
# other > 0.05 is reported as disturbed and its numbers should not be trusted.
#
# Environment: BARE_PORT (3001), LAYER_PORT (3002), ROUNDS (2), DURATION (10s),
# CONNECTIONS (32), WARMUP (3s), QUIET_WAIT (600).
set -euo pipefail
cd "$(dirname "$0")/../.."

BARE_PORT=${BARE_PORT:-3001}
LAYER_PORT=${LAYER_PORT:-3002}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-3s}
QUIET_WAIT=${QUIET_WAIT:-600}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SCRIPTS=scripts/bench
SAME_KEY=bench-same-key

command -v wrk >/dev/null || { echo "run.sh: wrk is not installed" >&2; exit 1; }
command -v curl >/dev/null || { echo "run.sh: curl is not installed" >&2; exit 1; }

PIN_SERVER=()
PIN_WRK=()
if command -v taskset >/dev/null && taskset -c 0,1 true 2>/dev/null; then
    PIN_SERVER=(taskset -c 0)
    PIN_WRK=(taskset -c 1)
    echo "run.sh: server pinned to CPU 0, wrk to CPU 1"
else
    echo "run.sh: taskset unavailable (or no CPU 1): running unpinned"
fi

for port in "$BARE_PORT" "$LAYER_PORT"; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "run.sh: something already listens on port $port" >&2
        exit 1
    fi
done

cargo build --release -p examples --example bench_server
SERVER_BIN="$TARGET_DIR/release/examples/bench_server"

RESULTS="$TARGET_DIR/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RESULTS"

BARE_PORT=$BARE_PORT LAYER_PORT=$LAYER_PORT "${PIN_SERVER[@]}" "$SERVER_BIN" \
    >"$RESULTS/server.log" 2>&1 &
SERVER_PID=$!
stop_server() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap stop_server EXIT

url() { echo "http://127.0.0.1:$1/payments"; }
BODY='{"amount":1000,"currency":"EUR"}'
post() { # port [key]: prints the status code
    local args=(-s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json'
        --data "$BODY")
    [ $# -gt 1 ] && args+=(-H "Idempotency-Key: $2")
    curl "${args[@]}" "$(url "$1")"
}

for _ in $(seq 100); do
    if post "$BARE_PORT" >/dev/null && post "$LAYER_PORT" >/dev/null; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$RESULTS/server.log" >&2; exit 1; }
    sleep 0.1
done

# Sanity: both answer 201, and the one key of the same-key scenario is executed (and stored)
# before its runs start.
for port in "$BARE_PORT" "$LAYER_PORT"; do
    for key in "" "$SAME_KEY"; do
        status=$(post "$port" ${key:+"$key"})
        [ "$status" = 201 ] || { echo "run.sh: port $port key '$key' answered $status" >&2; exit 1; }
    done
done

# scenario -> wrk script and its argument
script_of() {
    case $1 in
        pass-through) echo "$SCRIPTS/same-key.lua" ;;
        unique-keys) echo "$SCRIPTS/unique-keys.lua" ;;
        same-key) echo "$SCRIPTS/same-key.lua" ;;
    esac
}
arg_of() { # scenario run-label
    case $1 in
        pass-through) echo "--no-key" ;;
        unique-keys) echo "$2.$(date +%s%N)" ;;
        same-key) echo "$SAME_KEY" ;;
    esac
}

# CPU time in clock ticks: busy time of the whole machine, and of one process.
TICKS=$(getconf CLK_TCK)
cpu_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
proc_cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Waits until the machine (the idle server aside) uses under 5% of a CPU, at most QUIET_WAIT s.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) said=0 b0 b1
    while :; do
        b0=$(cpu_busy)
        sleep 1
        b1=$(cpu_busy)
        [ $((b1 - b0)) -le $((TICKS / 20)) ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "run.sh: the machine is still busy after ${QUIET_WAIT}s; measuring anyway" >&2
            return 0
        fi
        [ "$said" = 1 ] || echo "run.sh: other processes are using the CPUs; waiting" >&2
        said=1
    done
}

# run_wrk scenario target label duration: prints the wrk output file, then the CPUs used by
# the server, by wrk and by everything else during the run.
run_wrk() {
    local scenario=$1 target=$2 label=$3 duration=$4 port
    port=$([ "$target" = bare ] && echo "$BARE_PORT" || echo "$LAYER_PORT")
    local out="$RESULTS/$label-$scenario-$target.txt"
    local t0 b0 s0 t1 b1 s1 w
    t0=$(date +%s%N) b0=$(cpu_busy) s0=$(proc_cpu "$SERVER_PID")
    # wrk's CPU time: the children time of the subshell that waited for it.
    w=$(
        "${PIN_WRK[@]}" wrk -t1 -c"$CONNECTIONS" -d"$duration" --latency \
            -s "$(script_of "$scenario")" "$(url "$port")" -- "$(arg_of "$scenario" "$label")" \
            >"$out" 2>&1
        awk '{ print $16 + $17 }' "/proc/$BASHPID/stat"
    )
    t1=$(date +%s%N) b1=$(cpu_busy) s1=$(proc_cpu "$SERVER_PID")
    awk -v out="$out" -v ns=$((t1 - t0)) -v hz="$TICKS" -v s=$((s1 - s0)) -v w="$w" \
        -v b=$((b1 - b0)) 'BEGIN {
            secs = ns / 1e9 * hz
            other = (b - s - w) / secs
            printf "%s %.2f %.2f %.2f\n", out, s / secs, w / secs, (other < 0 ? 0 : other)
        }'
}

rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
requests_of() { awk '/ requests in / { print $1 }' "$1"; }
non2xx_of() { awk '/Non-2xx or 3xx responses:/ { print $NF; f = 1 } END { if (!f) print 0 }' "$1"; }
errors_of() { grep -h 'Socket errors' "$1" | sed 's/^ *//' || true; }
latency_of() { awk '$1 == "Latency" { print $2; exit }' "$1"; }

SCENARIOS=(pass-through unique-keys same-key)

echo "run.sh: warming up ($WARMUP per scenario and target)"
for scenario in "${SCENARIOS[@]}"; do
    for target in bare layered; do
        run_wrk "$scenario" "$target" warmup "$WARMUP" >/dev/null
    done
done

declare -A RPS
PROBLEMS=()
KEYS_CREATED=0
echo "run.sh: wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS rounds; raw output in $RESULTS"
echo "        (server, wrk, other: CPUs used during the run)"
printf '%-6s %-13s %-8s %12s %10s %8s %7s %5s %6s\n' \
    round scenario target req/s latency non-2xx server wrk other
for round in $(seq "$ROUNDS"); do
    order=(bare layered)
    [ $((round % 2)) -eq 0 ] && order=(layered bare)
    for scenario in "${SCENARIOS[@]}"; do
        for target in "${order[@]}"; do
            wait_quiet
            read -r out server wrk other < <(run_wrk "$scenario" "$target" "round$round" "$DURATION")
            rps=$(rps_of "$out")
            non2xx=$(non2xx_of "$out")
            RPS[$scenario,$target,$round]=${rps:-0}
            printf '%-6s %-13s %-8s %12s %10s %8s %7s %5s %6s\n' "$round" "$scenario" "$target" \
                "${rps:-?}" "$(latency_of "$out")" "$non2xx" "$server" "$wrk" "$other"
            [ -n "$rps" ] || PROBLEMS+=("$out: no Requests/sec line")
            [ "$non2xx" = 0 ] || PROBLEMS+=("$out: $non2xx non-2xx/3xx responses")
            errors=$(errors_of "$out")
            [ -z "$errors" ] || PROBLEMS+=("$out: $errors")
            awk -v o="$other" 'BEGIN { exit !(o > 0.05) }' &&
                PROBLEMS+=("$out: disturbed, other processes used $other CPUs")
            if [ "$scenario" = unique-keys ] && [ "$target" = layered ]; then
                KEYS_CREATED=$((KEYS_CREATED + $(requests_of "$out")))
            fi
        done
    done
done

echo
echo "layered/bare (requests/sec):"
for scenario in "${SCENARIOS[@]}"; do
    line=$(printf '  %-13s' "$scenario")
    sum_bare=0 sum_layered=0
    for round in $(seq "$ROUNDS"); do
        bare=${RPS[$scenario,bare,$round]} layered=${RPS[$scenario,layered,$round]}
        line+=$(awk -v b="$bare" -v l="$layered" -v r="$round" \
            'BEGIN { printf "  round %d: %.0f / %.0f = %.3f", r, l, b, (b > 0 ? l / b : 0) }')
        sum_bare=$(awk -v s="$sum_bare" -v x="$bare" 'BEGIN { print s + x }')
        sum_layered=$(awk -v s="$sum_layered" -v x="$layered" 'BEGIN { print s + x }')
    done
    line+=$(awk -v b="$sum_bare" -v l="$sum_layered" -v n="$ROUNDS" \
        'BEGIN { printf "  | mean: %.0f / %.0f = %.3f", l / n, b / n, (b > 0 ? l / b : 0) }')
    echo "$line"
done

rss=$(ps -o rss= -p "$SERVER_PID" 2>/dev/null | tr -d ' ' || true)
echo "keys created by the measured unique-key runs: $KEYS_CREATED (plus warm-up; the store" \
    "holds 2 000 000, then evicts)"
[ -z "$rss" ] || echo "server RSS at the end: $((rss / 1024)) MiB"

if [ ${#PROBLEMS[@]} -gt 0 ]; then
    echo
    echo "problems:"
    printf '  %s\n' "${PROBLEMS[@]}"
    exit 1
fi
