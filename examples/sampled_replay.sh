#!/usr/bin/env bash
# Replay the shipped sample through percentage-mode sampling, then estimate the true totals.
# No root needed. Usage: examples/sampled_replay.sh [KSTAP] (default: kstap on PATH, else the venv's)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kstap="${1:-$(command -v kstap || echo "$here/../.venv/bin/kstap")}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$kstap" tap --read "$here/sample.pcapng" --mode percentage --rate 50% --seed 0x5eed \
    --entries "$out/entries.ndjson" -w "$out/sampled.pcapng" --no-dashboard
"$kstap" stats "$out/sampled.pcapng"
echo "entries: $(wc -l < "$out/entries.ndjson")"
