#!/usr/bin/env bash
# Issue 15: everything a lent GPU is for, in ONE device call of at most 9 minutes of command time.
# Steps, in order of value, each under its own `timeout`, its files copied to $OUT as soon as it ends:
#   1. environment and the GPU tests (pytest -m gpu)                      -> env.txt, tests.txt
#   2. engine speed, CUDA graphs on and off, against the floors            -> engine_speed.txt
#   3. calibration of $MODEL at TP 1 within $CAL_BUDGET seconds            -> profile.tgz
#   4. validation of sarathi, vllm and orca at loads 0.5 and 0.9           -> validate.txt, validate.tgz
#   5. if time is left: the FlexAttention backend's compile count, speed   -> flex.txt
# plus commands.log (each command, its exit status and seconds). At most 8 files, one folder deep.
#
# The GPU image has torch, pandas, pyarrow, tqdm, matplotlib but not simpy, and no network: carry its wheel.
# Here, once:   pip download --no-deps -d .whl simpy==4.1.2   (.whl/ is git-ignored)
# Device call:  run(command="OUT=$OUT bash benchmarks/gpu_run.sh", carry=[".whl"], timeout_s=600)
# CPU dry run (tests/test_gpu_run.py; under 3 minutes here):
#               MODEL=tiny DEVICE=cpu OUT=/tmp/gpu-dry bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder whose files come back}
MODEL=${MODEL:-llama-2-7b}
DEVICE=${DEVICE:-cuda}
TOTAL_S=${TOTAL_S:-540}             # the whole script's command time
LIMIT_SCALE=${LIMIT_SCALE:-1}       # every step's limit times this (the CPU dry run on a busy machine: its
                                    # steps must finish, whatever their wall time; the limits are the GPU's)
CAL_BUDGET=${CAL_BUDGET:-180}
N=${N:-40}                          # requests per validated (scheduler, load) pair
WORK=${WORK:-/tmp/gpu_run}
if [[ $DEVICE == cpu ]]; then       # the dry run: same steps, sizes that finish on a 2-core CPU
  DTYPE=${DTYPE:-float32}; CAL_BUDGET=${CAL_BUDGET_CPU:-25}; N=${N_CPU:-16}
  SPEED_ARGS=(--prefill 64,256 --decode 1,8 --context 128 --repeats 3 --gemm-size 256)
  CAL_ARGS=(--quick); LENGTHS=(--prompt-len uniform:16:96 --output-len uniform:4:16)
else
  DTYPE=${DTYPE:-bfloat16}
  SPEED_ARGS=(--prefill 512,2048,4096 --decode 1,8,32,128 --context 1024)
  CAL_ARGS=(); LENGTHS=(--prompt-len uniform:64:1536 --output-len uniform:16:256)
fi
rm -rf "$WORK"; mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
T0=$SECONDS
log() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$OUT/commands.log"; }
left() { echo $((TOTAL_S - (SECONDS - T0))); }

# step: NAME LIMIT_S OUTFILE CMD...  (runs CMD under timeout, tees to $OUT/OUTFILE, logs status and time)
step() {
  local name=$1 limit=$(($2 * LIMIT_SCALE)) file=$3; shift 3
  local rest; rest=$(left)
  (( limit > rest )) && limit=$rest
  if (( limit < 10 )); then log "$name: skipped, $rest s left"; return 1; fi
  log "$name (limit ${limit}s): $*"
  local t=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$OUT/$file" 2>&1
  local rc=$?
  log "$name: exit $rc after $((SECONDS - t)) s$([[ $rc == 124 ]] && echo ' (timed out)')"
  return $rc
}

if ! python3 -c "import simpy" 2>/dev/null; then
  wheel=$(ls .whl/simpy-*.whl 2>/dev/null | head -1)
  if [[ -z $wheel ]] || ! python3 -m pip install -q --no-index --no-deps --target "$WORK/site" "$wheel"; then
    log "simpy is missing and no carried wheel installed (.whl/simpy-*.whl): stopping"; exit 3
  fi
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
servesim() { python3 -m sim.cli "$@"; }

# 1. environment and GPU tests
{
  date -u; uname -a; git rev-parse HEAD 2>/dev/null || true
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import sys, torch, simpy, numpy, pandas; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'simpy', simpy.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__);
print('devices', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
  echo "MODEL=$MODEL DEVICE=$DEVICE DTYPE=$DTYPE CAL_BUDGET=$CAL_BUDGET N=$N TOTAL_S=$TOTAL_S"
} >"$OUT/env.txt" 2>&1
step tests 60 tests.txt python3 -m pytest -q -m gpu -p no:cacheprovider tests

# 2. engine speed, graphs on (the engine's default on CUDA) and off
step speed-graphs 50 engine_speed.txt python3 benchmarks/engine_speed.py --model "$MODEL" --device "$DEVICE" \
  --dtype "$DTYPE" "${SPEED_ARGS[@]}"
if [[ $DEVICE == cuda ]]; then
  step speed-eager 40 engine_speed.txt python3 benchmarks/engine_speed.py --model "$MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" --no-cuda-graphs "${SPEED_ARGS[@]}"
fi

# 3. calibration (the profile is packed even when the budget stopped it: a partial profile still prices)
PROFILE="$WORK/profile-$MODEL-$DEVICE"
step calibrate $((CAL_BUDGET + 60)) calibrate.log servesim calibrate --model "$MODEL" --tp 1 --device "$DEVICE" \
  --dtype "$DTYPE" --out "$PROFILE" --budget-s "$CAL_BUDGET" -q "${CAL_ARGS[@]}"
[[ -d $PROFILE ]] && cp "$OUT/calibrate.log" "$PROFILE/" 2>/dev/null; rm -f "$OUT/calibrate.log"
[[ -d $PROFILE ]] && tar -czf "$OUT/profile.tgz" -C "$WORK" "$(basename "$PROFILE")"

# 4. validation against that profile
if [[ -f $PROFILE/profile.json ]]; then
  step validate 240 validate.txt servesim validate --model "$MODEL" --device "$DEVICE" --dtype "$DTYPE" \
    --profile "$PROFILE" --schedulers sarathi,vllm,orca --token-budget sarathi=512 --load 0.5,0.9 -n "$N" \
    "${LENGTHS[@]}" --repeats 1 --no-timeline --out "$WORK/validate"
  [[ -d $WORK/validate ]] && tar -czf "$OUT/validate.tgz" -C "$WORK" validate
else
  log "validate: skipped, no profile"
fi

# 5. FlexAttention: compiles and speed (what is left of the time)
step flex 90 flex.txt python3 benchmarks/flex_check.py --device "$DEVICE" --dtype "$DTYPE"
log "done in $((SECONDS - T0)) s; files: $(ls "$OUT" | tr '\n' ' ')"
