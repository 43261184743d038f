#!/usr/bin/env bash
# Per-round time of FedMix on Flower's deployment engine against the in-process `loop` round, on
# the same config, measured alternately (in-process, deployment, in-process, deployment, ...) so
# that both see the same load on a shared machine.
#
#   benchmarks/flower_round_time.sh [WORK_DIR]
#
# Environment: PAIRS [2]  NUM_SITES [4]  ROUNDS [4]  OVERRIDES [""] (config overrides, as for
# scripts/deploy_localhost.sh, e.g. "model.width=8"); the deployment runs with TLS, SuperNode
# authentication, the ClientApp in each SuperNode's process (INPROC=1 of
# scripts/deploy_localhost.sh), and Flower's waits capped at POLL
# seconds (default 0.2; 0.1 measured slower on 2 cores: the polls compete for them); with more
# sites than cores the sites' ClientApp threads run at nice 5 (SITE_NICE / SITE_XLA_FLAGS, see
# scripts/deploy_localhost.sh).
# Prints each run's median round time after round 1 (the in-process figure is the compiled round,
# the deployment figure the server's time from sending the pair to the last accepted reply plus
# aggregation; evaluation excluded in both) and the ratio of the medians over all runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mkdir -p "${1:-/tmp/fedmix_flower_bench}" && cd "${1:-/tmp/fedmix_flower_bench}" && pwd)
PAIRS=${PAIRS:-2}
NUM_SITES=${NUM_SITES:-4}
ROUNDS=${ROUNDS:-4}
OVERRIDES=${OVERRIDES:-""}
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || PY=$(command -v python3)
export FLWR_TELEMETRY_ENABLED=0 JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache"
median() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['timing']['round_s_median'])" "$1"; }
ARGS=(--config "$REPO/configs/synthetic.py" --config.num_rounds="$ROUNDS" --config.train.executor=loop
      --config.data.num_clients="$NUM_SITES" --quiet)
for o in $OVERRIDES; do ARGS+=("--config.$o"); done
IN=() DEP=()
for k in $(seq 1 "$PAIRS"); do
  rm -rf "$WORK/inproc_$k"
  echo "== pair $k: in-process loop round ($(uptime | sed 's/.*load/load/'))"
  "$PY" -m fedmix_jax.main "${ARGS[@]}" --workdir "$WORK/inproc_$k" > "$WORK/inproc_$k.log" 2>&1
  IN+=("$(median "$WORK/inproc_$k/summary.json")")
  echo "   median round after round 1: ${IN[-1]} s"
  echo "== pair $k: deployment, ClientApp in each SuperNode ($(uptime | sed 's/.*load/load/'))"
  env INPROC=1 NUM_SITES="$NUM_SITES" OVERRIDES="num_rounds=$ROUNDS data.num_clients=$NUM_SITES $OVERRIDES" \
    "$REPO/scripts/deploy_localhost.sh" "$WORK/deploy_$k" > "$WORK/deploy_$k.log" 2>&1 \
    || { echo "deployment failed: $WORK/deploy_$k.log"; tail -20 "$WORK/deploy_$k.log"; exit 1; }
  DEP+=("$(median "$WORK/deploy_$k/run/summary.json")")
  echo "   median round after round 1: ${DEP[-1]} s"
done
"$PY" - "${IN[*]}" "${DEP[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
print(f"in-process loop round: {' / '.join(f'{x:.2f}' for x in a)} s (median {statistics.median(a):.2f} s)")
print(f"deployment round:      {' / '.join(f'{x:.2f}' for x in b)} s (median {statistics.median(b):.2f} s)")
print(f"deployment / in-process: {statistics.median(b) / statistics.median(a):.2f}x")
PY
