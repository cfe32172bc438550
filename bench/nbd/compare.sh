#!/usr/bin/env bash
# Runs the same fio job (randrw.fio) against `drviso serve` (VBlock0 in its own host process,
# DMA through the IOMMU) and against `nbdkit memory` (a 16 MiB RAM disk in C, the baseline),
# one after the other in one session, and prints both IOPS and their ratio.
# Usage: bench/nbd/compare.sh [seconds per run, default 20] [iommu off|strict|lazy, default strict] [transport pipe|ring, default ring]
#        [routines pool|inline, default pool: inline is serve --run-to-completion, drivers' routines and
#        callers' continuations run on the threads that read the rings]
# Each run first warms up for RAMP seconds (default 5), not counted.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUNTIME="${1:-20}"
export RAMP="${RAMP:-5}"
iommu="${2:-strict}"
transport="${3:-ring}"
routines="${4:-pool}"
case "$routines" in
  pool) inline=() ;;
  inline) inline=(--run-to-completion) ;;
  *) echo "routines: pool or inline, not $routines" >&2; exit 2 ;;
esac
bash scripts/install-test-tools.sh
dotnet build -c Release tools/DriverIsolation.Cli -v q -nologo >/dev/null
port_drviso=$((20000 + RANDOM % 10000)); port_nbdkit=$((port_drviso + 1))
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

iops() { # fio's JSON -> read IOPS + write IOPS
  python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))'
}

dotnet tools/DriverIsolation.Cli/bin/Release/net10.0/drviso.dll serve --iommu "$iommu" --transport "$transport" "${inline[@]}" --nbd "127.0.0.1:${port_drviso}" >"$out/serve.log" 2>&1 &
until grep -q "NBD: listening" "$out/serve.log"; do sleep 0.2; done
NBD_URI="nbd://127.0.0.1:${port_drviso}/VBlock0" fio --output-format=json bench/nbd/randrw.fio >"$out/drviso.json"
drviso=$(iops <"$out/drviso.json")

nbdkit --foreground --port "$port_nbdkit" --ipaddr 127.0.0.1 --exit-with-parent memory 16M >/dev/null 2>&1 &
until nbdinfo --size "nbd://127.0.0.1:${port_nbdkit}" >/dev/null 2>&1; do sleep 0.2; done
NBD_URI="nbd://127.0.0.1:${port_nbdkit}" fio --output-format=json bench/nbd/randrw.fio >"$out/nbdkit.json"
nbdkit=$(iops <"$out/nbdkit.json")

python3 - "$drviso" "$nbdkit" "$iommu" "$RUNTIME" "$transport" "$RAMP" "$routines" <<'PY'
import sys
drviso, nbdkit, iommu, runtime, transport, ramp, routines = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
print(f"fio randrw 4k iodepth 8, {runtime} s each after {ramp} s of warm-up")
print(f"drviso serve (VBlock0, process isolation, IOMMU {iommu}, {transport} transport, routines {routines}): {drviso} IOPS")
print(f"nbdkit memory 16M:                                   {nbdkit} IOPS")
print(f"ratio drviso / nbdkit: {drviso / nbdkit:.3f}")
PY
