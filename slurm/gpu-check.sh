#!/usr/bin/env bash
# The prepared GPU check (issue 29), for a machine with one GPU lent for minutes: within BUDGET seconds (default
# 540), `repro run all --scale gpu` (its verdict table in reports/gpu/verdicts.md), then the fused ResNet-18 bench
# with the time that remains, and a dated section in reports/benchmarks.md: device, each recipe's time, verdicts,
# bench ratios. MNIST comes from REPRO_DATA (default: shared/data inside the working tree, carried there by hand:
# the GPU machine has no network). Run from the repository root: bash slurm/gpu-check.sh
set -u
BUDGET=${BUDGET:-540}
DATA=${REPRO_DATA:-shared/data}
REPRO=${REPRO:-repro}
start=$(date +%s)
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
mkdir -p reports/gpu
timeout --signal=TERM $((BUDGET * 2 / 3)) "$REPRO" run all --scale gpu --runs-dir runs-gpu --reports-dir reports/gpu \
  "data.root=$DATA" 2>&1 | tee reports/gpu/run.log
run_status=${PIPESTATUS[0]}
left=$((BUDGET - ($(date +%s) - start) - 15))
bench_status=skipped
if [ "$left" -gt 60 ]; then
  timeout --signal=TERM "$left" "$REPRO" bench --size full --device cuda --case fused_resnet18_16xw4 \
    --record reports/benchmarks.md 2>&1 | tee reports/gpu/bench.log
  bench_status=${PIPESTATUS[0]}
fi
python3 - "$device" "$run_status" "$bench_status" "$(( $(date +%s) - start ))" <<'PY'
import re, sys, time
from pathlib import Path
device, run_status, bench_status, took = sys.argv[1:]
log = Path("reports/gpu/run.log").read_text() if Path("reports/gpu/run.log").exists() else ""
times = re.findall(r"finished (\w+) in (\d+) s \(exit status (-?\d+)\)", log)
table = Path("reports/gpu/verdicts.md")
totals = next((l for l in table.read_text().splitlines() if l.startswith("Totals:")), "no verdict table") \
    if table.exists() else "no verdict table"
lines = [f"\n## {time.strftime('%Y-%m-%d')} (GPU check): `bash slurm/gpu-check.sh` on {device or 'an unnamed GPU'}", "",
         f"`repro run all --scale gpu` exit status {run_status}, the fused bench {bench_status}, {took} s in all. "
         f"Verdicts (reports/gpu/verdicts.md): {totals}", "", "| recipe | seconds | exit status |", "|---|---|---|"]
lines += [f"| {name} | {s} | {code} |" for name, s, code in times]
with open("reports/benchmarks.md", "a") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
