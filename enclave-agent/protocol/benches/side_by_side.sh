#!/usr/bin/env bash
# Attestation verification, Rust (criterion, `benches/verify.rs`) beside an OpenSSL-based
# verifier (`benches/openssl_peer.py`), on the same real AWS document in one run. The peer runs
# before and after the Rust bench so a change in machine load shows up as a gap between its
# two results; the load average is printed at each step.
#
# Needs the shared test data (`$NAUTILUS_TESTDATA` or ../shared/testdata beside the clone)
# and `pip install cbor2 cryptography`. Not part of the default test run.
#
# Usage: enclave-agent/protocol/benches/side_by_side.sh [criterion filter, default: attestation]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
testdata="${NAUTILUS_TESTDATA:-$root/../shared/testdata}"
document="$testdata/nitro/turnkey-prod-2024-07-16.cbor"
filter="${1:-attestation}"

if [[ ! -f "$document" ]]; then
    echo "skipped: $document not found"
    exit 0
fi
python3 -c 'import cbor2, cryptography' 2>/dev/null || {
    echo "the OpenSSL peer needs: pip install cbor2 cryptography" >&2
    exit 1
}

load() { echo "# load: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cpus) at $(date -u +%H:%M:%SZ)"; }

cd "$root"
cargo bench -p nautilus-protocol --bench verify --no-run
load
echo "# openssl peer (before)"
python3 "$here/openssl_peer.py" "$document"
load
echo "# rust (criterion)"
cargo bench -p nautilus-protocol --bench verify -- "$filter" 2>&1 |
    grep -E '^(attestation|[[:space:]]+time:|[[:space:]]+thrpt:)|^[a-z].*time:'
load
echo "# openssl peer (after)"
python3 "$here/openssl_peer.py" "$document"
load
