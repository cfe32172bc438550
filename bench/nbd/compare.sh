#!/usr/bin/env bash
# Runs the same fio job (randrw.fio) against `drviso serve` (VBlock0 in its own host process,
# DMA through the IOMMU) and against `nbdkit memory` (a 16 MiB RAM disk in C, the baseline),
# one after the other in one session, and prints both IOPS and their ratio.
# Usage: bench/nbd/compare.sh [seconds per run, default 20] [iommu off|strict|lazy, default strict] [transport pipe|ring, default ring]
#        [routines pool|inline, default pool: inline is serve --run-to-completion, drivers' routines and
#        callers' continuations run on the threads that read the rings]
# Each run first warms up for RAMP seconds (default 5), not counted. ROUNDS=n (default 1) runs the
# job n times against each server, alternating (both stay up), and prints each round's ratio and the
# medians: on a shared machine one pair of runs moves by a tenth either way.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUNTIME="${1:-20}"
export RAMP="${RAMP:-5}"
rounds="${ROUNDS:-1}"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS: a whole number from 1, not $rounds" >&2; exit 2; }
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
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$out"' EXIT

iops() { # fio's JSON -> read IOPS + write IOPS
  python3 -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):])["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))'
}

dotnet tools/DriverIsolation.Cli/bin/Release/net10.0/drviso.dll serve --iommu "$iommu" --transport "$transport" "${inline[@]}" --nbd "127.0.0.1:${port_drviso}" >"$out/serve.log" 2>&1 &
until grep -q "NBD: listening" "$out/serve.log"; do sleep 0.2; done
nbdkit --foreground --port "$port_nbdkit" --ipaddr 127.0.0.1 --exit-with-parent memory 16M >/dev/null 2>&1 &
until nbdinfo --size "nbd://127.0.0.1:${port_nbdkit}" >/dev/null 2>&1; do sleep 0.2; done

# One server at a time: each fio run has the machine to itself (the other server idles).
drviso=() nbdkit=()
for ((round = 1; round <= rounds; round++)); do
  NBD_URI="nbd://127.0.0.1:${port_drviso}/VBlock0" fio --output-format=json bench/nbd/randrw.fio >"$out/drviso.json"
  drviso+=("$(iops <"$out/drviso.json")")
  NBD_URI="nbd://127.0.0.1:${port_nbdkit}" fio --output-format=json bench/nbd/randrw.fio >"$out/nbdkit.json"
  nbdkit+=("$(iops <"$out/nbdkit.json")")
done

python3 - "$iommu" "$RUNTIME" "$transport" "$RAMP" "$routines" "${drviso[*]}" "${nbdkit[*]}" <<'PY'
import statistics, sys
iommu, runtime, transport, ramp, routines = sys.argv[1:6]
drviso, nbdkit = [int(x) for x in sys.argv[6].split()], [int(x) for x in sys.argv[7].split()]
ratios = [d / n for d, n in zip(drviso, nbdkit)]
label = f"drviso serve (VBlock0, process isolation, IOMMU {iommu}, {transport} transport, routines {routines}):"
if len(ratios) == 1:
    print(f"fio randrw 4k iodepth 8, {runtime} s each after {ramp} s of warm-up")
    print(f"{label} {drviso[0]} IOPS")
    print(f"nbdkit memory 16M:                                   {nbdkit[0]} IOPS")
    print(f"ratio drviso / nbdkit: {ratios[0]:.3f}")
else:
    print(f"fio randrw 4k iodepth 8, {runtime} s each after {ramp} s of warm-up, {len(ratios)} rounds alternating")
    for i, (d, n, r) in enumerate(zip(drviso, nbdkit, ratios), 1):
        print(f"round {i}: drviso {d} IOPS, nbdkit {n} IOPS, ratio {r:.3f}")
    print(f"{label} median {round(statistics.median(drviso))} IOPS")
    print(f"nbdkit memory 16M:                                   median {round(statistics.median(nbdkit))} IOPS")
    print(f"ratio drviso / nbdkit: median {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")
PY
