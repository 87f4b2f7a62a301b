#!/bin/bash
# Statement query latency on a big load-generator journal (EXPORT.md, "Statement query latency"): a
# switch on a fresh directory D, 1,000,000 cards prepared, one registered card given 1,000 internet
# payments around two batched SALE runs, then `pinswitch-exporter run` and `pinswitch-exporter
# statement --repeat 1000`. Needs the release binaries (pinswitch, pinswitch-loadgen,
# pinswitch-exporter) in B; about 4 minutes, ~8 GB in D. Run it only on an otherwise idle machine.
set -euo pipefail
B=${B:-target/release}
D=${D:-/tmp/pinswitch-statement-bench}
ADDR=127.0.0.1:7441
rm -rf "$D"; mkdir -p "$D"
"$B/pinswitch" serve --data "$D/data" --listen $ADDR --shards 2 > "$D/server.log" 2>&1 &
echo $! > "$D/server.pid"
until grep -q "listening on" "$D/server.log"; do sleep 0.2; done
L="$B/pinswitch-loadgen"
/usr/bin/time -f "prepare %e s" "$L" prepare --connect $ADDR --cards 1000000 --face-value 100000 --load-won 400000 --cards-file "$D/cards.bin" > "$D/prepare.log"
X=$("$B/pinswitch" card issue --connect $ADDR --product 100000 | awk '{print $1}')
echo "$X" > "$D/card.pin"
"$B/pinswitch" card sell --connect $ADDR "$X" --channel 3 --price 100000 --means 1 > /dev/null
"$B/pinswitch" card activate --connect $ADDR "$X" --password 4321 > /dev/null
"$B/pinswitch" card register --connect $ADDR "$X" --holder 7 --verified-name > /dev/null
sales() { for i in $(seq 1 500); do "$B/pinswitch" card sale --connect $ADDR "$X" --password 4321 --amount 50 --merchant $((77 + i % 3)) > /dev/null; done; }
sales
"$L" run --connect $ADDR --cards-file "$D/cards.bin" --workload sale --connections 2 --in-flight 4 --batch 8000 --duration ${SECONDS_PER_RUN:-8} --seed 19 > "$D/run1.log"
sales
"$L" run --connect $ADDR --cards-file "$D/cards.bin" --workload sale --connections 2 --in-flight 4 --batch 8000 --duration ${SECONDS_PER_RUN:-8} --seed 20 > "$D/run2.log"
kill -TERM "$(cat "$D/server.pid")"; while kill -0 "$(cat "$D/server.pid")" 2>/dev/null; do sleep 0.2; done
/usr/bin/time -f "pinswitch-exporter run %e s, max RSS %M KB" "$B/pinswitch-exporter" --data "$D/data" --state "$D/export" run | tail -12
du -sh "$D/data" "$D/export" "$D/export/statements"
"$B/pinswitch-exporter" --data "$D/data" --state "$D/export" statement "$X" --repeat 1000 > "$D/statement.txt"
/usr/bin/time -f "one statement command (process start, keys, query, all pages, print): %e s" "$B/pinswitch-exporter" --data "$D/data" --state "$D/export" statement "$X" > /dev/null
head -30 "$D/statement.txt"; grep -c " payment " "$D/statement.txt"
