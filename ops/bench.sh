#!/usr/bin/env bash
# Reproduces the end-to-end figures of ops/benchmarking.md in one go: builds the release
# binaries, starts a switch on a fresh data directory, prepares CARDS cards, runs the standard
# load-generator shapes (batched, one event per frame with 1 and 16 in flight, one connection,
# open loop at half the one-event peak), reads the switch's resident memory, kills it with
# SIGKILL and times its recovery, then (if redis-server is installed) runs the Redis peer in
# the same window, and Redis PING without persistence (what loopback round trips alone allow).
# The one-event and batched shapes run over mutual TLS too (tls_*), on the same port, and over
# QUIC (quic_*: mutual TLS, one stream per connection) on the UDP port beside it.
# Every run reports the CPU the generator and the switch spent per operation (--server-pid).
# Writes every report under DIR and a summary table to DIR/summary.md.
#
#   bash ops/bench.sh                     # 1,000,000 cards
#   CARDS=10000000 bash ops/bench.sh      # the memory and recovery figures
#
# Never run it beside a build or another benchmark: the machine has two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

CARDS=${CARDS:-1000000}
DIR=${DIR:-/tmp/pinswitch-bench}
DURATION_S=${DURATION_S:-10}
PORT=${PORT:-7431}
REDIS=${REDIS:-1}

cargo build --release --bin pinswitch --bin pinswitch-loadgen
SWITCH=target/release/pinswitch
LOADGEN=target/release/pinswitch-loadgen
ADDRESS=127.0.0.1:$PORT
QUIC_ADDRESS=127.0.0.1:$((PORT + 1))
# The ISO 8583 listener (clear PIN blocks: the generator holds the cards' passwords anyway).
ISO_ADDRESS=127.0.0.1:$((PORT + 2))
# The Diameter credit-control listener.
DIAMETER_ADDRESS=127.0.0.1:$((PORT + 3))

rm -rf "$DIR"
mkdir -p "$DIR"
SUMMARY=$DIR/summary.md

# TLS beside plain TCP on the same port (ops/trust.md): a test CA, the switch's certificate,
# and a client certificate for an admin identity (mutual TLS).
"$SWITCH" tls init --dir "$DIR/certs" --client bench >/dev/null
cat >"$DIR/trust.toml" <<EOF
[tls]
cert_pem = "$DIR/certs/switch.pem"
key_pem = "$DIR/certs/switch.key"
client_ca_pem = "$DIR/certs/ca.pem"
[[access.identities]]
name = "bench"
roles = ["admin"]
[iso8583]
listen = "$ISO_ADDRESS"
pin_block = "clear"
[diameter]
listen = "$DIAMETER_ADDRESS"
EOF
TLS_FLAGS=(--tls-ca "$DIR/certs/ca.pem" --tls-cert "$DIR/certs/bench.pem" --tls-key "$DIR/certs/bench.key")

start_switch() {
    local log=$1
    "$SWITCH" serve --data "$DIR/data" --listen "$ADDRESS" --quic-listen "$QUIC_ADDRESS" \
        --config "$DIR/trust.toml" >"$log" 2>&1 &
    echo $! >"$DIR/pid"
    until grep -q "listening" "$log"; do
        if ! kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
            echo "bench: the switch did not start:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# One field of a loadgen JSON report.
field() {
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"
}

# A numeric field with one decimal, or "-" when the report has none (null).
field_1() {
    python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('-' if v is None else f'{v:.1f}')" "$1" "$2"
}

# CONNECT=address picks another front door than plain TCP (the QUIC port).
run() {
    local name=$1
    shift
    # The switch's pid: the report gives its CPU per operation beside the generator's.
    "$LOADGEN" run --connect "${CONNECT:-$ADDRESS}" --cards-file "$DIR/cards.bin" --workload sale \
        --duration "$DURATION_S" --report "$DIR/$name.json" --svg "$DIR/$name.svg" \
        --server-pid "$(cat "$DIR/pid")" "$@" >"$DIR/$name.txt" 2>&1
    printf '| %s | `%s` | %.0f | %s | %s | %s | %s | %s |\n' "$name" "$*" "$(field "$DIR/$name.json" ops_per_s)" \
        "$(field "$DIR/$name.json" p50_us)" "$(field "$DIR/$name.json" p99_us)" \
        "$(field_1 "$DIR/$name.json" loadgen_cpu_us_per_op)" "$(field_1 "$DIR/$name.json" server_cpu_us_per_op)" \
        "$(field "$DIR/$name.json" errors_by_code)" >>"$SUMMARY"
}

start_switch "$DIR/server.log"
{
    echo "# Pinswitch bench, $(date -u +%Y-%m-%dT%H:%MZ), $CARDS cards, $(nproc) cores, $(git rev-parse --short HEAD)"
    echo
    echo '```'
} >"$SUMMARY"
"$LOADGEN" prepare --connect "$ADDRESS" --cards "$CARDS" --face-value 100000 --load-won 400000 \
    --cards-file "$DIR/cards.bin" 2>&1 | tee -a "$SUMMARY"
{
    echo '```'
    echo
    echo "| run | loadgen settings | ops/s | p50 µs | p99 µs | loadgen CPU µs/op | switch CPU µs/op | errors |"
    echo "|---|---|---|---|---|---|---|---|"
} >>"$SUMMARY"

# One event per frame first: the batched run writes millions of records, and the snapshots
# they trigger (serialized and written in the background) would overlap the latency runs.
run single_1x1 --connections 1 --in-flight 1 --batch 1 --seed 22
run single_50x1 --connections 50 --in-flight 1 --batch 1 --seed 20
HALF_RATE=$(python3 -c "import json; print(int(json.load(open('$DIR/single_50x1.json'))['ops_per_s'] / 2))")
run half_peak_open_loop --connections 50 --in-flight 4 --batch 1 --rate "$HALF_RATE" --seed 23
run single_50x16 --connections 50 --in-flight 16 --batch 1 --seed 21
# The same shapes over mutual TLS (before the batched run, for the same reason).
run tls_50x1 --connections 50 --in-flight 1 --batch 1 --seed 24 "${TLS_FLAGS[@]}"
run tls_50x16 --connections 50 --in-flight 16 --batch 1 --seed 25 "${TLS_FLAGS[@]}"
CONNECT=$QUIC_ADDRESS run quic_50x1 --connections 50 --in-flight 1 --batch 1 --seed 27 --quic "${TLS_FLAGS[@]}"
CONNECT=$QUIC_ADDRESS run quic_50x16 --connections 50 --in-flight 16 --batch 1 --seed 28 --quic "${TLS_FLAGS[@]}"
# One-event requests through the adapter front ends (ISO 8583 0200 sales, Diameter CCR EVENTs
# of 500 won) onto the same path, beside the native 50 x 1 and 50 x 16 above: the same row
# format, from `pinswitch-loadgen iso8583` and `pinswitch-loadgen diameter`.
adapter() {
    local name=$1 command=$2 address=$3
    shift 3
    "$LOADGEN" "$command" --connect "$address" --cards-file "$DIR/cards.bin" --duration "$DURATION_S" \
        --report "$DIR/$name.json" --server-pid "$(cat "$DIR/pid")" "$@" >"$DIR/$name.txt" 2>&1
    printf '| %s | `%s %s` | %.0f | %s | %s | %s | %s | %s |\n' "$name" "$command" "$*" "$(field "$DIR/$name.json" ops_per_s)" \
        "$(field "$DIR/$name.json" p50_us)" "$(field "$DIR/$name.json" p99_us)" \
        "$(field_1 "$DIR/$name.json" loadgen_cpu_us_per_op)" "$(field_1 "$DIR/$name.json" server_cpu_us_per_op)" \
        "$(field "$DIR/$name.json" errors_by_code)" >>"$SUMMARY"
}
adapter iso8583_50x1 iso8583 "$ISO_ADDRESS" --connections 50 --in-flight 1 --seed 30
adapter iso8583_50x16 iso8583 "$ISO_ADDRESS" --connections 50 --in-flight 16 --seed 31
adapter diameter_50x1 diameter "$DIAMETER_ADDRESS" --connections 50 --in-flight 1 --seed 32
adapter diameter_50x16 diameter "$DIAMETER_ADDRESS" --connections 50 --in-flight 16 --seed 33
run batched --connections 2 --in-flight 4 --batch 8000 --seed 19
run tls_batched --connections 2 --in-flight 4 --batch 8000 --seed 26 "${TLS_FLAGS[@]}"
CONNECT=$QUIC_ADDRESS run quic_batched --connections 2 --in-flight 4 --batch 8000 --seed 29 --quic "${TLS_FLAGS[@]}"

PID=$(cat "$DIR/pid")
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
HWM_KB=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
{
    echo
    echo "resident memory: $((RSS_KB / 1024)) MiB = $((RSS_KB * 1024 / CARDS)) bytes per card (peak $((HWM_KB / 1024)) MiB)"
} >>"$SUMMARY"

kill -9 "$PID"
# A big process takes a while to die (its memory is torn down); its journal locks go with it.
while kill -0 "$PID" 2>/dev/null; do
    sleep 0.05
done
STARTED_NS=$(date +%s%N)
start_switch "$DIR/server-recovery.log"
RECOVERY_MS=$(( ($(date +%s%N) - STARTED_NS) / 1000000 ))
{
    echo "recovery after SIGKILL: $RECOVERY_MS ms (process start to listening)"
    grep "recovered" "$DIR/server-recovery.log"
} >>"$SUMMARY"
# Call sessions on the recovered switch (issue 5): 100,000 concurrent calls; see benchmarking.md.
"$LOADGEN" run --connect "$ADDRESS" --cards-file "$DIR/cards.bin" --workload calls --calls 100000 --tariff 10,12,6,0 --connections 8 --in-flight 8 --batch 64 --warmup 20 --duration "$DURATION_S" --seed 35 --validate --server-pid "$(cat "$DIR/pid")" --report "$DIR/calls.json" >"$DIR/calls.txt" 2>&1 && { echo; grep -E "^(calls|sessions|latency|cpu|tariff|validation) " "$DIR/calls.txt"; } >>"$SUMMARY"
kill "$(cat "$DIR/pid")"
wait 2>/dev/null || true

if [ "$REDIS" = 1 ] && command -v redis-server >/dev/null && [ -f ../shared/peers/redis/run_redis.sh ]; then
    echo >>"$SUMMARY"
    echo "Redis peer, same window (appendfsync always, 50 connections, pipeline 1 and 16):" >>"$SUMMARY"
    bash ../shared/peers/redis/run_redis.sh always 1000000 1 16 >"$DIR/redis.txt" 2>&1
    # The run header and the throughput and latency lines of each pipeline depth.
    grep -E "^=== |throughput summary|^ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$|avg +min" "$DIR/redis.txt" >>"$SUMMARY"
fi

# Redis PING without persistence: a round trip that does no work, so its rate is what loopback
# TCP and the system calls allow on this machine, the ceiling of any one-event-per-frame shape.
REDIS_PING_PORT=7493
if [ "$REDIS" = 1 ] && command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
    redis-server --port "$REDIS_PING_PORT" --save "" --appendonly no --daemonize no \
        >"$DIR/redis-ping-server.log" 2>&1 &
    REDIS_PING_PID=$!
    # Stopped on any exit, so a failed benchmark does not leave it running.
    trap 'kill "$REDIS_PING_PID" 2>/dev/null || true' EXIT
    # `-q` prints progress lines ending in a carriage return, then "PING_MBULK: N requests per
    # second[, p50=...]"; the rate is the whole part of the number before "requests per second".
    redis_ping() {
        redis-benchmark -p "$REDIS_PING_PORT" -c 50 -n 600000 -P "$1" -t ping_mbulk -q \
            | tee -a "$DIR/redis-ping.txt" | tr '\r' '\n' \
            | sed -nE 's/^.*: ([0-9]+)(\.[0-9]*)? requests per second.*$/\1/p' | tail -n 1
    }
    PING_P1=
    PING_P16=
    until grep -q "Ready to accept connections" "$DIR/redis-ping-server.log"; do
        if ! kill -0 "$REDIS_PING_PID" 2>/dev/null; then
            # E.g. the port is taken: the other figures are still worth their summary.
            echo "bench: redis-server on port $REDIS_PING_PORT did not start (see $DIR/redis-ping-server.log)" >&2
            REDIS_PING_PID=
            break
        fi
        sleep 0.05
    done
    if [ -n "$REDIS_PING_PID" ]; then
        # A failed benchmark shows as "?" rather than ending the script before the summary.
        PING_P1=$(redis_ping 1) || true
        PING_P16=$(redis_ping 16) || true
        kill "$REDIS_PING_PID"
        wait "$REDIS_PING_PID" 2>/dev/null || true
    fi
    trap - EXIT
    {
        echo
        echo "Redis PING, no persistence, 50 connections, pipeline 1 / 16: ${PING_P1:-?} / ${PING_P16:-?} requests/s (the network's limit)"
    } >>"$SUMMARY"
fi
cat "$SUMMARY"
