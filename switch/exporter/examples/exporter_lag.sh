#!/bin/bash
# Exporter lag under a sustained load (EXPORT.md, "Lag under a sustained load"). Phase "baseline": a
# switch on a fresh directory, 200,000 cards prepared, 60 s of SALEs at 20,000/s open loop, no
# exporter. Phase "follow": the same, with a plain `pinswitch-exporter run` catching up on the
# prepared cards and `pinswitch-exporter run --follow 70` beside the load. Reports (loadgen, the
# follower's per-second lines, /usr/bin/time -v) stay in D; the data directories are deleted at the
# end. Needs the release binaries (pinswitch, pinswitch-loadgen, pinswitch-exporter) in B; about 3
# minutes, ~1 GB in D. Only on an otherwise idle machine.
set -euo pipefail
B=${B:-target/release}
D=${D:-/tmp/pinswitch-exporter-lag}
ADDR=127.0.0.1:7451
mkdir -p "$D"
phase() {
    local name=$1 exporter=$2 switch follower=
    rm -rf "$D/data" "$D/export" "$D/cards.bin"
    "$B/pinswitch" serve --data "$D/data" --listen $ADDR --shards 2 > "$D/$name-switch.log" 2>&1 &
    switch=$!
    until grep -q listening "$D/$name-switch.log"; do sleep 0.1; done
    "$B/pinswitch-loadgen" prepare --connect $ADDR --cards 200000 --face-value 100000 --load-won 400000 --cards-file "$D/cards.bin" > "$D/$name-prepare.txt" 2>&1
    if [ "$exporter" = yes ]; then
        /usr/bin/time -v "$B/pinswitch-exporter" --data "$D/data" --state "$D/export" run > "$D/$name-catchup.txt" 2> "$D/$name-catchup.time"
        /usr/bin/time -v "$B/pinswitch-exporter" --data "$D/data" --state "$D/export" run --follow 70 > "$D/$name-follow.txt" 2> "$D/$name-follow.time" &
        follower=$!
        sleep 2
    fi
    "$B/pinswitch-loadgen" run --connect $ADDR --cards-file "$D/cards.bin" --workload sale --connections 4 --in-flight 4 \
        --batch 20 --rate 20000 --duration 60 --seed 7 --report "$D/$name-load.json" > "$D/$name-load.txt" 2>&1
    if [ -n "$follower" ]; then wait "$follower" || true; fi
    kill "$switch"
    wait "$switch" || true
}
phase baseline no
phase follow yes
rm -rf "$D/data" "$D/export" "$D/cards.bin"
grep -h "^ops\|^latency" "$D/baseline-load.txt" "$D/follow-load.txt"
grep "^followed" "$D/follow-follow.txt"
