#!/usr/bin/env bash
# kill -9 chaos of the real binary under the load generator's validation (issue 16): CYCLES
# times, a mixed load (SALE, AUTHORIZE / CAPTURE / VOID / REVERSE, CARD_LOAD) runs with
# `--validate` while the switch is killed with SIGKILL at a seeded random moment, every 5th
# cycle killed again during its recovery, and restarted. Each run first reads every card back
# and compares it with what the previous cycle's replies implied (a run refuses to start
# otherwise), resolves the replies the kill took by INQUIRY (executed once, or not at all),
# voids the holds they left, and compares every card's balance and held amount at the end. A
# cycle fails on any mismatch; the script stops at the first. The summary line gives the
# figures the note asks for.
#
#   bash ops/chaos.sh              # 30 cycles (what CI runs, with PROFILE=debug)
#   CYCLES=1000 DURATION_S=2 RATE=25000 bash ops/chaos.sh   # the long run
#
# The journal keeps every segment (no exporter runs here): unthrottled, a cycle writes about
# 90 MB, so a long run needs RATE (operations a second) to fit the disk.
#
# Never run it beside a build or a benchmark: the machine has two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${CYCLES:-30}
CARDS=${CARDS:-20000}
DURATION_S=${DURATION_S:-4}
SEED=${SEED:-1}
RATE=${RATE:-0}
PROFILE=${PROFILE:-release}
DIR=${DIR:-/tmp/pinswitch-chaos}
PORT=${PORT:-7455}
ADDRESS=127.0.0.1:$PORT

if [ "$PROFILE" = release ]; then
    cargo build --release --bin pinswitch --bin pinswitch-loadgen
else
    cargo build --bin pinswitch --bin pinswitch-loadgen
fi
SWITCH=target/$PROFILE/pinswitch
LOADGEN=target/$PROFILE/pinswitch-loadgen

rm -rf "$DIR"
mkdir -p "$DIR"
# Small segments and frequent snapshots, so kills land among rolls and snapshots, and
# recovery goes through snapshot + replay.
cat >"$DIR/chaos.toml" <<TOML
[journal]
segment_bytes = 4194304
commit_bytes_max = 1048576
snapshot_every_records = 50000
TOML

PID=
start_switch() {
    local log=$1
    "$SWITCH" serve --data "$DIR/data" --listen "$ADDRESS" --config "$DIR/chaos.toml" >"$log" 2>&1 &
    PID=$!
}
wait_listening() {
    local log=$1
    until grep -qs "listening" "$log"; do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "chaos: the switch did not start:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.02
    done
}
trap 'kill -9 $PID 2>/dev/null || true' EXIT

# The seeded moments: a kill 0.5 s .. DURATION_S - 0.5 s into the run, a second one 0.02 ..
# 0.3 s into recovery.
moment() {
    python3 -c "import random,sys; r=random.Random(int(sys.argv[1])); lo,hi=float(sys.argv[2]),float(sys.argv[3]); print(f'{r.uniform(lo,hi):.3f}')" "$@"
}

start_switch "$DIR/switch-0.log"
wait_listening "$DIR/switch-0.log"
"$LOADGEN" prepare --connect "$ADDRESS" --cards "$CARDS" --face-value 10000 --load-won 490000 \
    --cards-file "$DIR/cards.bin" >"$DIR/prepare.log" 2>&1

kills=0
recovery_kills=0
ops=0
lost=0
executed=0
not_executed=0
for cycle in $(seq 1 "$CYCLES"); do
    "$LOADGEN" run --connect "$ADDRESS" --cards-file "$DIR/cards.bin" \
        --workload mix:sale=8,gateway=1,recharge=1 --connections 4 --in-flight 8 --batch 64 \
        --duration "$DURATION_S" --rate "$RATE" --warmup 0 --seed "$((SEED * 100000 + cycle))" --validate \
        --report "$DIR/run-$cycle.json" >"$DIR/run-$cycle.log" 2>&1 &
    RUN=$!
    sleep "$(moment "$((SEED * 100000 + cycle))" 0.5 "$(python3 -c "print($DURATION_S - 0.5)")")"
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    kills=$((kills + 1))
    if [ $((cycle % 5)) -eq 0 ]; then
        start_switch "$DIR/switch-$cycle-a.log"
        sleep "$(moment "$((SEED * 200000 + cycle))" 0.02 0.3)"
        kill -9 "$PID"
        wait "$PID" 2>/dev/null || true
        kills=$((kills + 1))
        recovery_kills=$((recovery_kills + 1))
    fi
    start_switch "$DIR/switch-$cycle.log"
    wait_listening "$DIR/switch-$cycle.log"
    if ! wait "$RUN"; then
        echo "chaos: cycle $cycle FAILED (see $DIR/run-$cycle.log):" >&2
        tail -20 "$DIR/run-$cycle.log" >&2
        exit 1
    fi
    grep -q "validation   OK" "$DIR/run-$cycle.log" || {
        echo "chaos: cycle $cycle did not validate:" >&2
        tail -20 "$DIR/run-$cycle.log" >&2
        exit 1
    }
    read -r cycle_ops cycle_lost cycle_executed cycle_not < <(python3 - "$DIR/run-$cycle.json" "$DIR/run-$cycle.log" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
log = open(sys.argv[2]).read()
m = re.search(r"(\d+) operations lost their reply: (\d+) executed, (\d+) not executed, (\d+) unresolved", log)
lost, executed, not_executed = (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)
print(report.get("ops", 0), lost, executed, not_executed)
PY
)
    ops=$((ops + cycle_ops))
    lost=$((lost + cycle_lost))
    executed=$((executed + cycle_executed))
    not_executed=$((not_executed + cycle_not))
done
# A last check of every card by the standalone validator, the switch stopped and started once more.
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
start_switch "$DIR/switch-end.log"
wait_listening "$DIR/switch-end.log"
"$LOADGEN" validate --connect "$ADDRESS" --cards-file "$DIR/cards.bin" >"$DIR/validate.log" 2>&1 || {
    cat "$DIR/validate.log" >&2
    exit 1
}
echo "chaos: $CYCLES cycles, $kills SIGKILLs ($recovery_kills during recovery), $ops operations answered, $lost replies lost to the kills ($executed had run, $not_executed had not); every cycle validated every card (balance and held): no acknowledged operation lost, none applied twice; at the end: $(tail -1 "$DIR/validate.log")"
