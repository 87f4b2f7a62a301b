#!/usr/bin/env bash
# The memory and recovery figures of ops/benchmarking.md at 10,000,000 cards: starts a switch on
# a fresh data directory, prepares CARDS cards (issue, sell, activate, load: a full op-id window),
# reads its resident memory, runs a 10 s batched run and a 10 s run of one event per frame (50
# connections x 16 in flight), with snapshots on, reads it again, kills it with SIGKILL, drops
# the page cache (when run as root) and times its recovery to listening, then reads it again.
#
#   bash ops/memory.sh                          # 10,000,000 cards, DIR=/tmp/pinswitch-memory
#   CARDS=1000000 bash ops/memory.sh
#   SWITCH_ENV="MALLOC_ARENA_MAX=2" bash ops/memory.sh   # the switch under another environment
#
# Needs about 10 GB of disk at 10 M cards. Never run it beside a build or another benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

CARDS=${CARDS:-10000000}
DIR=${DIR:-/tmp/pinswitch-memory}
PORT=${PORT:-7441}
DURATION_S=${DURATION_S:-10}
SWITCH_ENV=${SWITCH_ENV:-}

cargo build --release --bin pinswitch --bin pinswitch-loadgen
SWITCH=target/release/pinswitch
LOADGEN=target/release/pinswitch-loadgen
ADDRESS=127.0.0.1:$PORT

rm -rf "$DIR"
mkdir -p "$DIR"

start_switch() {
    # shellcheck disable=SC2086 # SWITCH_ENV is a list of NAME=value words
    env $SWITCH_ENV "$SWITCH" serve --data "$DIR/data" --listen "$ADDRESS" >"$1" 2>&1 &
    PID=$!
    until grep -q "listening on" "$1" 2>/dev/null; do
        kill -0 "$PID" 2>/dev/null || { cat "$1"; exit 1; }
        sleep 0.05
    done
}

resident() {
    local rss_kb hwm_kb
    rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
    hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
    echo "$1: resident $((rss_kb / 1024)) MiB = $((rss_kb * 1024 / CARDS)) bytes per card (peak $((hwm_kb / 1024)) MiB)"
}

start_switch "$DIR/switch.log"
"$LOADGEN" prepare --connect "$ADDRESS" --cards "$CARDS" --face-value 100000 --load-won 400000 \
    --cards-file "$DIR/cards.bin" | tail -1
resident "after prepare"
"$LOADGEN" run --connect "$ADDRESS" --cards-file "$DIR/cards.bin" --workload sale \
    --connections 2 --in-flight 4 --batch 8000 --duration "$DURATION_S" 2>/dev/null | grep '^ops'
"$LOADGEN" run --connect "$ADDRESS" --cards-file "$DIR/cards.bin" --workload sale \
    --connections 50 --in-flight 16 --batch 1 --duration "$DURATION_S" 2>/dev/null | grep '^ops'
# Let a snapshot in progress finish: the figure is the switch at rest after the runs.
sleep 5
resident "after the runs ($(grep -c 'snapshot at record .*written' "$DIR/switch.log") snapshots written)"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
sync
if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
STARTED_NS=$(date +%s%N)
start_switch "$DIR/recovery.log"
ENDED_NS=$(date +%s%N)
echo "recovery after SIGKILL: $(( (ENDED_NS - STARTED_NS) / 1000000 )) ms (cold cache: $([ "$(id -u)" = 0 ] && echo yes || echo no))"
grep recovered "$DIR/recovery.log"
resident "after recovery"
kill "$PID"
wait "$PID" 2>/dev/null || true
