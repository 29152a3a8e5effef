#!/usr/bin/env bash
# The main job, as users run it: a local Ray head on 127.0.0.1, `ray job submit` of
# jobs/distill.py for one language with the tiny-cpu config, then the head is stopped
# through the process that started it (never a machine-wide `ray stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KAKUGO_VENV:-.venv}
LANGUAGE=${LANGUAGE:-Scottish Gaelic}
OUTPUT=${OUTPUT:-$PWD/runs/demo}
PORT=${RAY_PORT:-6389}
DASH_PORT=${RAY_DASHBOARD_PORT:-8265}
export PATH="$PWD/$VENV/bin:$PATH"
export KAKUGO_DATA_DIR=${KAKUGO_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0
# Token authentication for the head and every client (the token is made on first use).
export RAY_AUTH_MODE=token

ray_dir=$(mktemp -d /tmp/kakugo-ray-XXXXXX)
setsid ray start --head --block --node-ip-address=127.0.0.1 --port="$PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" --num-cpus=8 \
  --temp-dir="$ray_dir" >"$ray_dir/head.log" 2>&1 &
head_pid=$!
# SIGTERM to the head's process group, then SIGKILL to what is left of it after 20 s
# (`ray start --block` leaves gcs_server running on SIGTERM).
stop_head() {
  kill -TERM -- "-$head_pid" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 -- "-$head_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$head_pid" 2>/dev/null || true
  wait "$head_pid" 2>/dev/null || true
}
trap stop_head EXIT

for _ in $(seq 60); do
  ray job list --address "http://127.0.0.1:$DASH_PORT" >/dev/null 2>&1 && break
  kill -0 "$head_pid" 2>/dev/null || { cat "$ray_dir/head.log"; exit 1; }
  sleep 2
done

echo "[demo] submitting jobs/distill.py for '$LANGUAGE' -> $OUTPUT"
ray job submit --address "http://127.0.0.1:$DASH_PORT" --working-dir . \
  --runtime-env-json "{\"env_vars\": {\"KAKUGO_DATA_DIR\": \"$KAKUGO_DATA_DIR\", \"HF_HUB_OFFLINE\": \"1\"}}" \
  -- python jobs/distill.py --config configs/tiny-cpu.yaml --languages "$LANGUAGE" --output "$OUTPUT"
