#!/usr/bin/env bash
# Backs up a Pinswitch data directory into a new directory (ops/README.md, Backup): the
# exporter's state first, then the layout, then per shard its snapshots and only then its
# journal segments. Segments only grow, so the segments copied last hold every record the
# snapshots copied before them cover, and the exporter's cursors are never ahead of the journal
# copied after them. Works with the switch running (a last segment copied mid-commit has a torn
# tail, which recovery cuts: those operations were not acknowledged when the copy began);
# run it between two exporter runs, not during one. The key file is not copied: back it up
# apart (ops/README.md, Keys), or pass --with-keys to put it in the backup too.
#
#   bash ops/backup.sh DATA DEST [--with-keys]
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: bash ops/backup.sh DATA DEST [--with-keys]" >&2
    exit 2
fi
DATA=$1
DEST=$2
WITH_KEYS=${3:-}
if [[ ! -f "$DATA/shards.count" ]]; then
    echo "backup: $DATA is not a Pinswitch data directory (no shards.count)" >&2
    exit 1
fi
if [[ -e "$DEST" && -n "$(ls -A "$DEST")" ]]; then
    echo "backup: $DEST exists and is not empty; give a new directory" >&2
    exit 1
fi
umask 077
mkdir -p "$DEST"

# 1. The exporter's state (its checkpoint files, without temporary ones).
if [[ -d "$DATA/export" ]]; then
    (cd "$DATA" && find export -type d -print0 | xargs -0 -I{} mkdir -p "$DEST/{}")
    (cd "$DATA" && find export -type f ! -name '*.tmp' -print0 |
        xargs -0 -I{} cp -p --sparse=always "{}" "$DEST/{}")
fi
# 2. The layout.
cp -p "$DATA/shards.count" "$DEST/"
# 3. Per shard: snapshots, then segments (never the spare, the lock or a snapshot being written).
segments=0
snapshots=0
for shard in "$DATA"/shard-*; do
    name=$(basename "$shard")
    mkdir -p "$DEST/$name"
    for file in "$shard"/snapshot-*.snap; do
        [[ -e "$file" ]] || continue
        cp -p "$file" "$DEST/$name/"
        snapshots=$((snapshots + 1))
    done
    for file in "$shard"/journal-*.seg; do
        [[ -e "$file" ]] || continue
        cp -p --sparse=always "$file" "$DEST/$name/"
        segments=$((segments + 1))
    done
done
if [[ "$WITH_KEYS" == "--with-keys" ]]; then
    cp -p "$DATA/keys.bin" "$DEST/"
fi
sync
echo "backup: $(ls -d "$DEST"/shard-* | wc -l) shards, $segments segments, $snapshots snapshots in $DEST$([[ "$WITH_KEYS" == "--with-keys" ]] && echo ", with the key file" || echo "; the key file is not in it")"
