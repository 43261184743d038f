#!/usr/bin/env bash
# FedMix round benchmark on an accelerator (written for one H100 / H200), in one command:
#
#     bash benchmarks/gpu_bench.sh            # from anywhere; it runs from the repository root
#
# Installs nothing: it uses whatever `python3` (or $PYTHON) imports jax / flax / optax (on a GPU
# machine that is a CUDA jax, e.g. `jax[cuda]`), and the JSON records the backend and device it
# ran on (a CPU-only jax runs too, only slowly). Results go to $OUT if set, else ./bench_out:
#
#     gpu_bench.json   every part under its own key (rewritten after each section of each part)
#     gpu_bench.log    the full log, ending with the tables of every part
#
# Parts, each its own process (a crash or an out-of-memory in one keeps the others' results):
#   realistic      4 clients x 32 images, 224x224 (the reference's crop size), width 64 (the
#                  paper's 17.3 M-parameter U-Net), batch 16: the `map` executor (plus `sharded`
#                  when several devices are present), the sequential reference-structured
#                  baseline, the PyTorch baseline if torch is importable (same GPU), the parts
#                  (pseudo-labels, local training, aggregation, one train step's FLOP/s
#                  against a matmul peak timed alternately with it), a kernel profile by HLO
#                  opcode. `vmap` is left out: on an H100 80 GB it ran out of
#                  memory at this size under XLA's default 75% limit (it asks for one 35 GiB
#                  buffer); `loop` is `map`'s work in three programs and a host loop. Choose
#                  others with BENCH_EXECUTORS=map,vmap,...
#   groups         the realistic round with the clients vectorised in groups of 2 and of 4
#                  (`vmap:G`, RoundConfig.client_group) against `map`, to choose the group by
#                  measurement (BENCH_GROUPS=map,vmap:2,... to change the list)
#   sweep          round time for 2, 4, 8, 16 clients at the same size (map executor: one
#                  client at a time, so memory does not grow with the clients) and the baseline;
#                  one process, each point written as it completes
#   bf16_dice      bfloat16 computation (float32 params) against float32: best-validation test
#                  Dice over 3 seeds and the round time, the main job's training at the
#                  realistic size (benchmarks/dtype_dice.py -> dtype_dice.json / .log)
#
# Time: about 8 minutes on an H100, mostly compilation (~20-35 s per round program, GPU
# autotuning included). Every part runs under `timeout` within a global budget (BENCH_BUDGET_S,
# default 480 s); parts that no longer fit are skipped and recorded as such. Compilation and
# autotuning caches go to BENCH_CACHE (default /tmp/fedmix_bench_cache): a rerun compiles faster.
# Override the size with BENCH_SIZE (e.g. "--image_size 64 --width 16 --batch_size 8
# --train_per_client 32"), and the bf16_dice part's with BENCH_DICE_SIZE (dtype_dice.py flags).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-./bench_out}
mkdir -p "$OUTDIR"
JSON="$OUTDIR/gpu_bench.json"
LOG="$OUTDIR/gpu_bench.log"
BUDGET=${BENCH_BUDGET_S:-480}
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Let XLA grow GPU memory on demand, so memory_stats' peak reflects what the round needs.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
# XLA's default limit is 75% of the card (60.8 GB of an H100 80 GB); allow more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
: > "$LOG"
echo '{}' > "$JSON"

SIZE=${BENCH_SIZE:-"--image_size 224 --width 64 --batch_size 16 --train_per_client 32"}

# Caches outside $OUT (only a few files come back from there). The per-fusion autotuning cache
# is an XLA flag that older jaxlibs reject: it is used only if this jax starts with it.
CACHE=${BENCH_CACHE:-/tmp/fedmix_bench_cache}
mkdir -p "$CACHE/jax" "$CACHE/autotune"
FLAG="--xla_gpu_per_fusion_autotune_cache_dir=$CACHE/autotune"
if XLA_FLAGS="${XLA_FLAGS:-} $FLAG" "$PY" -c "import jax; jax.numpy.zeros(1).block_until_ready()" \
    > /dev/null 2>&1; then
  export XLA_FLAGS="${XLA_FLAGS:-} $FLAG"
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

record_skip() {  # record_skip NAME REASON
  "$PY" - "$JSON" "$1" "$2" <<'PYEOF'
import json, sys
path, name, why = sys.argv[1:4]
with open(path) as f:
    data = json.load(f)
data[name] = {"skipped": why}
with open(path, "w") as f:
    json.dump(data, f, indent=1)
PYEOF
}

part() {  # part NAME MIN_SECONDS MAX_SECONDS ARGS...
  local name=$1 need=$2 cap=$3; shift 3
  local remaining; remaining=$(left)
  if (( remaining < need )); then
    echo "[gpu_bench] skip $name: ${remaining}s left of ${BUDGET}s" | tee -a "$LOG"
    record_skip "$name" "time budget: ${remaining} s left of ${BUDGET} s"
    return 0
  fi
  local limit=$(( remaining < cap ? remaining : cap ))
  echo "[gpu_bench] $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" \
    "$PY" benchmarks/bench.py "$@" --compilation_cache "$CACHE/jax" --json "$JSON" \
    --section "$name" >> "$LOG" 2>&1
  echo "[gpu_bench] $name exit $? after $(( $(date +%s) - START ))s" | tee -a "$LOG"
}

NDEV=$("$PY" -c "import jax; print(len(jax.devices()))" 2>> "$LOG" | tail -n 1)
"$PY" -c "import jax; print('[gpu_bench] jax', jax.__version__, 'backend', jax.default_backend(),
      jax.devices())" 2>&1 | tee -a "$LOG"
echo "[gpu_bench] XLA_FLAGS=${XLA_FLAGS:-}" | tee -a "$LOG"
"$PY" -c "import torch; print('[gpu_bench] torch', torch.__version__, 'cuda',
      torch.cuda.is_available())" 2>/dev/null | tee -a "$LOG" \
  || echo "[gpu_bench] torch not importable: no PyTorch baseline" | tee -a "$LOG"
EXECUTORS=${BENCH_EXECUTORS:-map}
if [[ -z ${BENCH_EXECUTORS:-} && ${NDEV:-1} =~ ^[0-9]+$ && ${NDEV:-1} -gt 1 ]]; then
  EXECUTORS="map,sharded"
fi

# shellcheck disable=SC2086  # $SIZE holds several arguments
part realistic 60 180 $SIZE --clients 4 --repeats 3 --warmup 1 --executors "$EXECUTORS" \
  --profile
# shellcheck disable=SC2086  # the client axis in vectorised groups: which group size fits and
# runs fastest (RoundConfig.client_group; vmap:4 is every client at once)
part groups 40 120 $SIZE --clients 4 --repeats 2 --warmup 1 \
  --executors "${BENCH_GROUPS:-map,vmap:2,vmap:4}" --noparts --nobaseline --notorch
# bfloat16 against float32 at equal test Dice? 3 seeds each, the main job's training of
# configs/synthetic.py at the realistic size (benchmarks/dtype_dice.py; its own JSON and log)
DICE_LEFT=$(left)
if (( DICE_LEFT >= 90 )); then
  DICE_LIMIT=$(( DICE_LEFT < 240 ? DICE_LEFT : 240 ))
  echo "[gpu_bench] bf16_dice (limit ${DICE_LIMIT}s)" | tee -a "$LOG"
  # shellcheck disable=SC2086  # BENCH_DICE_SIZE holds several arguments
  timeout --signal=TERM --kill-after=10 "$DICE_LIMIT" "$PY" benchmarks/dtype_dice.py \
    ${BENCH_DICE_SIZE:-"--image_size 224 --width 64 --batch_size 16"} \
    --rounds "${BENCH_DICE_ROUNDS:-6}" --seeds 0,1,2 --json "$OUTDIR/dtype_dice.json" \
    >> "$OUTDIR/dtype_dice.log" 2>&1
  echo "[gpu_bench] bf16_dice exit $? after $(( $(date +%s) - START ))s" | tee -a "$LOG"
else
  echo "[gpu_bench] skip bf16_dice: ${DICE_LEFT}s left" | tee -a "$LOG"
fi
# shellcheck disable=SC2086
part sweep 60 130 $SIZE --clients 4 --only_sweep --sweep_clients 2,4,8,16 --sweep_sizes "" \
  --sweep_repeats 2 --sweep_executor map --sweep_baseline --notorch

echo "[gpu_bench] done in $(( $(date +%s) - START ))s; results: $JSON" | tee -a "$LOG"
"$PY" - "$JSON" <<'PYEOF' 2>&1 | tee -a "$LOG"
import json, sys
from benchmarks.tables import format_tables
with open(sys.argv[1]) as f:
    data = json.load(f)
for name, part in data.items():
    print(f"\n===== {name} =====")
    if "skipped" in part:
        print("skipped:", part["skipped"])
        continue
    try:
        print(format_tables(part))
    except Exception as e:  # noqa: BLE001
        print("could not format:", type(e).__name__, e)
PYEOF
