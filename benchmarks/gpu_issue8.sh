#!/usr/bin/env bash
# Issue 8 on a lent GPU, one step per device call (each call <= 10 minutes, 30 minutes per session):
#   step=speed      engine iteration times vs floors          -> engine_speed.txt
#   step=calibrate  Llama-2-7B profile, TP 1,2,4,8 (resumable)  -> profile/ (+ report.md)
#   step=validate   orca, vllm, sarathi-512 at loads 0.5, 0.9  -> validate-<scheduler>/
# Everything is written under $WORK and packed into $OUT/issue8-<step>.tgz (the device tool returns at most
# 8 files, 2 folders deep). Unpack the calibrate step's profile into calibration/profiles/NAME and commit it
# before the validate step: a later call starts on a bare machine with the working tree only.
# Usage (device tool):  STEP=speed bash benchmarks/gpu_issue8.sh
#                       STEP=calibrate bash benchmarks/gpu_issue8.sh
#                       STEP=validate SCHEDULER=sarathi PROFILE=calibration/profiles/NAME bash benchmarks/gpu_issue8.sh
# Smoke test on a CPU:  MODEL=tiny DEVICE=cpu DTYPE=float32 N=20 OUT=/tmp/x STEP=all bash benchmarks/gpu_issue8.sh
#
# The GPU machine has torch, numpy, pandas, scipy, matplotlib and tqdm but not simpy, and no network: carry
# simpy's wheel. Here, once:  echo /.whl/ >> .git/info/exclude; pip download --no-deps -d .whl simpy==4.1.2
# then name `.whl` in the device call's carry; this script puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-llama-2-7b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
N=${N:-300}
OUT=${OUT:?set OUT to the folder whose files come back}
STEP=${STEP:?set STEP to speed, calibrate, validate or all}
TPS=${TPS:-1,2,4,8}
QUICK=${QUICK:-}
WORK=${WORK:-/tmp/issue8}
PROFILE=${PROFILE:-$WORK/profile}
mkdir -p "$OUT" "$WORK"
trap 'tar -czf "$OUT/issue8-$STEP.tgz" -C "$WORK" . && cp "$WORK"/*.txt "$WORK"/commands.log "$OUT"/ 2>/dev/null || true' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import simpy" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/simpy-*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
servesim() { python3 -m sim.cli "$@"; }

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$WORK/commands.log"; }

if [[ $STEP == speed || $STEP == all ]]; then
  cmd=(python3 benchmarks/engine_speed.py --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE")
  log "${cmd[*]}"
  "${cmd[@]}" 2>&1 | tee "$WORK/engine_speed.txt"
fi
if [[ $STEP == calibrate || $STEP == all ]]; then
  # resumable: a call that runs out of time leaves a partial profile that the next call completes
  cmd=(servesim calibrate --model "$MODEL" --tp "$TPS" --device "$DEVICE" --dtype "$DTYPE" --out "$PROFILE" --budget-s 540 $QUICK)
  log "${cmd[*]}"
  "${cmd[@]}" 2>&1 | tee -a "$WORK/calibrate.txt" || [[ $? == 3 ]]
fi
if [[ $STEP == validate || $STEP == all ]]; then
  for s in ${SCHEDULER:-orca vllm sarathi}; do
    cmd=(servesim validate -n "$N" --prompt-len sharegpt --output-len sharegpt --max-total-tokens 2048
         --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" --schedulers "$s" --token-budget sarathi=512
         --load 0.5,0.9 --profile "$PROFILE" --out "$WORK/validate-$s" -q)
    log "${cmd[*]}"
    "${cmd[@]}" 2>&1 | tail -40 | tee "$WORK/validate-$s.txt"
  done
fi
