#!/usr/bin/env bash
# A whole FedMix federation on this machine with Flower's deployment engine: one SuperLink (TLS,
# SuperNode authentication, its Control and Runtime APIs for the admin host 127.0.0.1 only:
# fedmix_jax.flower.superlink), NUM_SITES authenticated SuperNodes on the synthetic federation,
# one unregistered SuperNode that must be refused, then the run (fedmix_jax.flower.run) with the run config `sites`
# listing the registered hospitals (name=node id). Offline, loopback only.
#
#   scripts/deploy_localhost.sh [WORK_DIR]
#
# Environment (defaults in brackets):
#   NUM_SITES [3]     OVERRIDES [tiny: num_rounds=2 model.width=4 ...]   PORT_BASE [19090]
#   INPROC [1]        1 (the supported way to run a site; docs/across_sites.md): each SuperNode
#                     runs FedMix's ClientApp in its own process (fedmix_jax.flower.supernode
#                     --clientapp-in-process): one process per site, no tracing / compilation
#                     per round and no loopback hop per message.
#                     0 (0 with POLL=stock): Flower's SuperExec starts a ClientApp process
#                     (fedmix_jax/flower/app) for every message, which imports JAX, loads the
#                     data and compiles each time (a site on a stock Flower SuperNode; slow)
#   JAX_CACHE [1]     1: ClientApp processes share a persistent XLA compilation cache
#   SITE_NICE [auto]  nice level of the sites' computing (INPROC=1: the ClientApp thread).
#                     Across hospitals each site has its own machine; here NUM_SITES sites share
#                     the cores. auto: 5 when the sites outnumber the cores (Flower's message
#                     handling - SuperLink, SuperNodes, ServerApp - then does not wait behind the
#                     sites' XLA threads), else 0. Same numbers either way.
#   SITE_XLA_FLAGS [] XLA_FLAGS of the sites' SuperNodes with INPROC=1 (e.g.
#                     --xla_cpu_multi_thread_eigen=false for one compute thread per site;
#                     measured slower here: a large site then leaves a core idle once the small
#                     ones are done)
#   POLL [0.2]        the sites' SuperNodes run as fedmix_jax.flower.supernode with this idle
#                     poll (seconds; 0: Flower's own waits, with the ClientApp still in the
#                     SuperNode's process); POLL=stock runs Flower's own flower-supernode (3 s)
#   LINK_DB [memory]  the SuperLink's --database: memory (Flower's in-memory state and object
#                     store; this script registers the sites anew each time) or a file path (a
#                     SQLite file that keeps registrations across SuperLink restarts, but stores
#                     every message's model pair in it: each hop measured ~0.3 s slower here)
#   KILL_IN_ROUND []  r: after the run, the same run again in WORK/run_killed whose ServerApp is
#                     killed (kill -9) right after every site trained round r, then resumed by
#                     running the same command again; its metrics.jsonl must equal the first run's
#
# Prints the refused-site check, the per-round times and where metrics.jsonl / summary.json are.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mkdir -p "${1:-/tmp/fedmix_deploy}" && cd "${1:-/tmp/fedmix_deploy}" && pwd)
NUM_SITES=${NUM_SITES:-3}
PORT_BASE=${PORT_BASE:-19090}
POLL=${POLL:-0.2}
if [ "$POLL" = stock ]; then INPROC=${INPROC:-0}; else INPROC=${INPROC:-1}; fi
JAX_CACHE=${JAX_CACHE:-1}
LINK_DB=${LINK_DB:-memory}
[ "$LINK_DB" = memory ] && LINK_DB=":flwr-in-memory:"
if [ "$NUM_SITES" -gt "$(nproc)" ]; then SITE_NICE=${SITE_NICE:-5}; else SITE_NICE=${SITE_NICE:-0}; fi
SITE_XLA_FLAGS=${SITE_XLA_FLAGS:-}
SITE_FLAGS=$(echo "${XLA_FLAGS:-} $SITE_XLA_FLAGS" | xargs)   # XLA refuses a blank XLA_FLAGS
if [ -n "$SITE_FLAGS" ]; then SITE_ENV=(env "XLA_FLAGS=$SITE_FLAGS"); else SITE_ENV=(env -u XLA_FLAGS); fi
OVERRIDES=${OVERRIDES:-"num_rounds=2 model.width=4 model.depth=2 data.image_size=16 data.num_clients=3 data.train_sizes='(8,12,6)' data.levels=\"('box','pixel','box')\" data.val_size=4 data.test_size=4 train.batch_size=4"}
BIN="$REPO/.venv/bin"
[ -x "$BIN/flower-superlink" ] || BIN=$(dirname "$(command -v flower-superlink)")

export PATH="$BIN:$PATH"                  # the SuperLink / SuperNodes spawn flower-superexec etc.
export FLWR_TELEMETRY_ENABLED=0          # Flower's telemetry is on by default
export FLWR_HOME="$WORK/flwr_home"        # the `flwr` CLI's connection config lives here
export PYTHONUNBUFFERED=1
[ "$JAX_CACHE" = 1 ] && export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
rm -rf "$WORK/run" "$WORK/logs" "$WORK/state.db" "$FLWR_HOME" "$WORK/site_state"
mkdir -p "$WORK/logs" "$FLWR_HOME"
CERTS="$WORK/certs"
[ -f "$CERTS/server.pem" ] || "$REPO/scripts/make_certs.sh" "$CERTS" "$NUM_SITES" >/dev/null

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTPS port.
LINK=127.0.0.1:$((PORT_BASE + 1))
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-tls"

[superlink.local-tls]
address = "$LINK"
root-certificates = "$CERTS/ca.crt"
TOML

# --- the coordinator: SuperLink with TLS and SuperNode authentication -------------------------
# (across hospitals: --host 0.0.0.0; the Control and Runtime APIs still answer only the admin
# hosts, so registering keys and starting runs stays on the coordinator's machine)
"$BIN/python" -m fedmix_jax.flower.superlink --admin-hosts 127.0.0.1 \
  --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" --ssl-keyfile "$CERTS/server.key" \
  --enable-supernode-auth --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port $((PORT_BASE + 1)) --database "$LINK_DB" \
  > "$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 120); do grep -q "Application startup complete" "$WORK/logs/superlink.log" 2>/dev/null && break; sleep 0.5; done
sleep 2

# --- the coordinator registers each hospital's public key and lists its node id ---------------
SITES=""
for i in $(seq 0 $((NUM_SITES - 1))); do
  "$BIN/flwr" supernode register "$CERTS/site_$i.pub" local-tls > "$WORK/logs/register_$i.log" 2>&1
  NODE_ID=$(grep -o 'SuperNode [0-9]* registered' "$WORK/logs/register_$i.log" | awk '{print $2}')
  [ -n "$NODE_ID" ] || { echo "registering site_$i failed:"; cat "$WORK/logs/register_$i.log"; exit 1; }
  SITES="$SITES site_$i=$NODE_ID"
done

# --- each hospital: its SuperNode -------------------------------------------------------------
for i in $(seq 0 $((NUM_SITES - 1))); do
  NODE_CONFIG="data=\"synthetic\" site-index=$i site-name=\"site_$i\" state-dir=\"$WORK/site_state/site_$i\""
  if [ "$INPROC" = 1 ]; then
    [ "$POLL" = stock ] && { echo "INPROC=1 needs fedmix_jax.flower.supernode (not POLL=stock)"; exit 2; }
    SUPERNODE=("${SITE_ENV[@]}" "$BIN/python" -m fedmix_jax.flower.supernode --poll-interval "$POLL"
               --clientapp-in-process --clientapp-nice "$SITE_NICE")
  elif [ "$POLL" = stock ]; then SUPERNODE=("$BIN/flower-supernode")
  else SUPERNODE=("$BIN/python" -m fedmix_jax.flower.supernode --poll-interval "$POLL"); fi
  "${SUPERNODE[@]}" --superlink "$LINK" --root-certificates "$CERTS/ca.crt" \
    --auth-supernode-private-key "$CERTS/site_$i" \
    --node-config "$NODE_CONFIG" --host 127.0.0.1 --port $((PORT_BASE + 10 + i)) \
    > "$WORK/logs/supernode_$i.log" 2>&1 &
  PIDS+=($!)
done

# --- an unregistered SuperNode must be refused ------------------------------------------------
"$BIN/flower-supernode" --superlink "$LINK" --root-certificates "$CERTS/ca.crt" \
  --auth-supernode-private-key "$CERTS/intruder" \
  --node-config "data=\"synthetic\" site-index=0" --host 127.0.0.1 --port $((PORT_BASE + 9)) \
  --max-retries 3 --max-wait-time 20 > "$WORK/logs/intruder.log" 2>&1 &
INTRUDER=$!
PIDS+=($INTRUDER)
INTRUDER_RC=running
for _ in $(seq 120); do
  if ! kill -0 "$INTRUDER" 2>/dev/null; then wait "$INTRUDER" && INTRUDER_RC=0 || INTRUDER_RC=$?; break; fi
  sleep 0.5
done

# --- the run -----------------------------------------------------------------------------------
cat > "$WORK/run_config.toml" <<TOML
workdir = "$WORK/run"
sites = "${SITES# }"
num-sites = $NUM_SITES
round-timeout = 1200.0
wait-cap = $([ "$POLL" = stock ] && echo 0 || echo "$POLL")
overrides = '''$OVERRIDES'''
TOML
T0=$(date +%s.%N)
# (fedmix_jax.flower.run: flwr run + its logs, exit 0 only when the run finished:completed;
#  `flwr run --stream` itself exits 0 when the run fails)
"$BIN/python" -m fedmix_jax.flower.run "$REPO/fedmix_jax/flower/app" local-tls --run-config "$WORK/run_config.toml" \
  > "$WORK/logs/run.log" 2>&1 || { echo "the run failed; see $WORK/logs"; tail -40 "$WORK/logs/run.log"; exit 1; }
T1=$(date +%s.%N)

echo "== sites listed by the SuperLink"
"$BIN/flwr" supernode list local-tls 2>&1 | tail -n +1 | grep -v "^$" | head -20 || true
echo "== unregistered SuperNode (key not registered with the SuperLink)"
if [ "$INTRUDER_RC" != 0 ] && grep -q "Exit Code: 305" "$WORK/logs/intruder.log"; then
  echo "refused (process exit $INTRUDER_RC): $(grep -E "Exit Code|code: [0-9]+" "$WORK/logs/intruder.log" | tr '\n' ' ')"
else
  echo "FAILED: the unregistered SuperNode was not refused (exit $INTRUDER_RC)"
  tail -5 "$WORK/logs/intruder.log"; exit 1
fi
echo "== rounds (deployment, $NUM_SITES sites, in-process clientapp=$INPROC, jax cache=$JAX_CACHE, supernode poll=$POLL, site nice=$SITE_NICE, site XLA_FLAGS=$SITE_XLA_FLAGS)"
"$BIN/python" - "$WORK/run" <<'PY'
import json, sys, os
recs = [json.loads(l) for l in open(os.path.join(sys.argv[1], "metrics.jsonl"))]
for r in recs:
    print(f"round {r['round']}: {r['round_time_s']:.2f} s train round, accepted {r['accepted']}, "
          f"weights {[round(w, 4) for w in r['weights']]}, val dice {r.get('val_mean_dice')}")
later = [r["round_time_s"] for r in recs[1:]]
if later:
    later.sort()
    print(f"median train round after round 1: {later[len(later) // 2]:.2f} s")
PY
echo "total flwr run wall time: $(echo "$T1 - $T0" | bc) s"
echo "outputs: $WORK/run (metrics.jsonl, summary.json, plots, checkpoints); logs: $WORK/logs"

# --- optionally: the ServerApp killed mid-round, resumed, compared with the run above ----------
if [ -n "${KILL_IN_ROUND:-}" ]; then
  sed "s|^workdir = .*|workdir = \"$WORK/run_killed\"|" "$WORK/run_config.toml" > "$WORK/run_config_killed.toml"
  trains() { cat "$WORK"/logs/supernode_*.log | grep -c "train handled" || true; }
  WANT=$(( $(trains) + NUM_SITES * KILL_IN_ROUND ))
  "$BIN/python" -m fedmix_jax.flower.run "$REPO/fedmix_jax/flower/app" local-tls \
    --run-config "$WORK/run_config_killed.toml" > "$WORK/logs/run_killed_1.log" 2>&1 &
  RUNNER=$!
  for _ in $(seq 2400); do [ "$(trains)" -ge "$WANT" ] && break; sleep 0.05; done
  pkill -9 -f flwr-serverapp && echo "== ServerApp killed (kill -9) after every site trained round $KILL_IN_ROUND"
  KILLED_RC=0; wait "$RUNNER" || KILLED_RC=$?
  echo "the interrupted run's command exited $KILLED_RC: $(grep -o 'ended finished:[a-z]*' "$WORK/logs/run_killed_1.log" | tail -1)"
  [ "$KILLED_RC" != 0 ] || { echo "FAILED: the killed run was reported as completed"; exit 1; }
  "$BIN/python" -m fedmix_jax.flower.run "$REPO/fedmix_jax/flower/app" local-tls \
    --run-config "$WORK/run_config_killed.toml" > "$WORK/logs/run_killed_2.log" 2>&1 \
    || { echo "FAILED: the resumed run failed"; tail -40 "$WORK/logs/run_killed_2.log"; exit 1; }
  grep -h "fresh Adam moments" "$WORK"/logs/supernode_*.log && { echo "FAILED: a site lost its state"; exit 1; }
  "$BIN/python" - "$WORK/run" "$WORK/run_killed" <<'PY'
import json, os, sys
keys = ("loss1", "loss2", "counts", "selected_weak", "weights", "val_mean_dice", "test_mean_dice")
a, b = ([{k: r.get(k) for k in keys} for r in map(json.loads, open(os.path.join(d, "metrics.jsonl")))]
        for d in sys.argv[1:])
summary = json.load(open(os.path.join(sys.argv[2], "summary.json")))
print(f"resumed from round {summary['resumed_from']}; rounds {len(a)} / {len(b)}; "
      f"every round's losses, weights and Dice equal: {a == b}")
sys.exit(0 if a == b and summary["resumed_from"] > 0 else 1)
PY
fi
