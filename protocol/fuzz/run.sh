#!/usr/bin/env bash
# Builds the cargo-fuzz target `decode` the way `cargo fuzz` does (nightly, SanitizerCoverage
# for libFuzzer) without needing cargo-fuzz installed, then fuzzes the frame and message
# decoders for SECONDS (default 20). Any panic or crash fails the run and leaves the input in
# artifacts/. Usage: protocol/fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
target="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo +nightly build --locked --release --bin decode --target "$target"
mkdir -p corpus/decode artifacts/decode
"target/$target/release/decode" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -artifact_prefix=artifacts/decode/ corpus/decode
