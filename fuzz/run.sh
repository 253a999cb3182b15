#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other, with the
# seed corpus from the golden fixtures. Needs the nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
# Usage: fuzz/run.sh [SECONDS] [TARGET ...]      (targets: envelope payload image)
# Findings land in fuzz/artifacts/<target>/; the last lines of each run's libFuzzer
# output (executions, coverage) are printed.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(envelope payload image)

seed() {
    local target=$1 dir=corpus/$1
    mkdir -p "$dir"
    case $target in
        envelope)
            cp ../actors/wire/tests/fixtures/v1/*.cbor "$dir"/ ;;
        payload)
            # The payloads inside the golden fixtures (the COSE_Sign1 payload field).
            cp seeds/payload/* "$dir"/ ;;
        image)
            # 8x8 PNG, JPEG and WebP, each behind the byte that declares its type.
            cp seeds/image/* "$dir"/ ;;
    esac
}

for t in "${targets[@]}"; do
    seed "$t"
    echo "== $t: ${seconds}s"
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -max_len=262144 -print_final_stats=1 2>&1 | tee "/tmp/orfeas-fuzz-$t.log" | grep -E "^(stat::|==|Done|#[0-9]+ +DONE)|ERROR|panicked" || true
done
