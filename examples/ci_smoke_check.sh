#!/usr/bin/env bash
# A CI smoke check: replay a capture, fail (exit 5) if fewer packets than expected or drops > 1 %.
# NDJSON events go to a file for the build log. Usage: examples/ci_smoke_check.sh [KSTAP]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kstap="${1:-$(command -v kstap || echo "$here/../.venv/bin/kstap")}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$kstap" tap --read "$here/sample.pcapng" -w "$out/smoke.pcapng" --json \
    --expect-packets 100 --max-drop 0.01 > "$out/events.ndjson"
tail -n 1 "$out/events.ndjson"
