#!/usr/bin/env bash
# Restores a backup made by ops/backup.sh into a new data directory (ops/README.md, Restore):
# copies it, puts the key file in place (from the backup, or KEYS), and leaves the rest to the
# switch: its next start recovers each shard from the newest snapshot and the segments after
# it, cutting a torn tail, exactly as after a crash.
#
#   bash ops/restore.sh BACKUP DATA [KEYS]
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: bash ops/restore.sh BACKUP DATA [KEYS]" >&2
    exit 2
fi
BACKUP=$1
DATA=$2
KEYS=${3:-}
if [[ ! -f "$BACKUP/shards.count" ]]; then
    echo "restore: $BACKUP is not a backup of ops/backup.sh (no shards.count)" >&2
    exit 1
fi
if [[ -e "$DATA" && -n "$(ls -A "$DATA")" ]]; then
    echo "restore: $DATA exists and is not empty; restore into a new directory" >&2
    exit 1
fi
if [[ -z "$KEYS" && ! -f "$BACKUP/keys.bin" ]]; then
    echo "restore: the backup has no key file; give it as the third argument" >&2
    exit 1
fi
umask 077
mkdir -p "$DATA"
chmod 700 "$DATA"
cp -rp "$BACKUP"/. "$DATA"/
if [[ -n "$KEYS" ]]; then
    cp -p "$KEYS" "$DATA/keys.bin"
    chmod 600 "$DATA/keys.bin"
fi
sync
echo "restore: $DATA is ready; start the switch on it (it recovers as after a crash)"
