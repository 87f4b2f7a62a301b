#!/usr/bin/env bash
# Makes a data directory with the binaries of one release, for the upgrade test
# (tests/tests/e2e_upgrade.rs), which starts today's binaries on a copy of it.
#   bash tests/data/upgrade/make.sh BIN_DIR OUT
# BIN_DIR holds that release's `pinswitch` and `pinswitch-exporter` (a debug build will do);
# OUT is created: OUT/data (journals in small segments, a snapshot of each shard, keys.bin, the
# exporter's state), OUT/switch.toml, and OUT/cards.txt (`PIN state balance_won tries_left`
# lines, as that release's `card show` reported them at the end).
set -euo pipefail
bin="$1"
out="$2"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
port=$((20000 + RANDOM % 20000))
cat > "$out/switch.toml" <<TOML
[server]
listen = "127.0.0.1:$port"

[journal]
segment_bytes = 65536
commit_bytes_max = 16384
snapshot_every_records = 6
TOML
"$bin/pinswitch" serve --data "$out/data" --shards 2 --config "$out/switch.toml" \
    > "$out/serve.log" 2>&1 &
switch=$!
trap 'kill $switch 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$out/serve.log" && break
    sleep 0.1
done
card() { "$bin/pinswitch" card "$@" --connect "127.0.0.1:$port"; }
rm -f "$out/pins.csv"
card issue --product 10000 --count 6 --pin-file "$out/pins.csv" > /dev/null
mapfile -t pins < <(cut -d, -f1 "$out/pins.csv")
rm "$out/pins.csv"
for pin in "${pins[@]}"; do
    card activate "$pin" --password 4321 > /dev/null
done
card sale "${pins[0]}" --password 4321 --amount 1500 > /dev/null
card load "${pins[1]}" --amount 10000 > /dev/null
card sale "${pins[2]}" --password 4321 --amount 300 > /dev/null
card sale "${pins[2]}" --password 4321 --amount 700 > /dev/null
card block "${pins[3]}" --reason lost > /dev/null
card sale "${pins[4]}" --password 9999 --amount 100 > /dev/null || true
card sale "${pins[5]}" --password 4321 --amount 10000 > /dev/null
: > "$out/cards.txt"
for pin in "${pins[@]}"; do
    card show "$pin" > "$out/show.txt"
    field() { awk -v name="$1" '$1 == name { print $2 }' "$out/show.txt"; }
    echo "$pin $(field state) $(field balance) $(field password)" >> "$out/cards.txt"
done
rm "$out/show.txt"
kill -TERM $switch
wait $switch || true
trap - EXIT
"$bin/pinswitch-exporter" run --data "$out/data" > /dev/null
rm "$out/serve.log" "$out/data/export/exporter.lock" "$out"/data/shard-*/journal.lock
