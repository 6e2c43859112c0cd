#!/usr/bin/env bash
# Fuzz the targets one at a time, each for SECONDS (default 600), at the lowest priority with
# a single job, from the corpora fuzz/seed.sh builds. Logs go to fuzz/logs/<target>.log, new
# inputs into fuzz/corpus/<target>/, crashes into fuzz/artifacts/<target>/ (none committed).
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]      (no TARGET: every target)
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only flags.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$(dirname "$here")"
seconds="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
mkdir -p "$here/logs"
for target in "${targets[@]}"; do
    [ -d "$here/corpus/$target" ] || { echo "no corpus for $target: run fuzz/seed.sh" >&2; exit 1; }
    echo "$(date -u +%FT%TZ) $target: ${seconds}s"
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run "$target" "$here/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$here/logs/$target.log" 2>&1
    status=$?
    summary="$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$here/logs/$target.log" | tail -1)"
    echo "$(date -u +%FT%TZ) $target: exit $status; $summary"
done
