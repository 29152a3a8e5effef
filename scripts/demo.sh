#!/usr/bin/env bash
# The main job, as users run it: a local Ray head on 127.0.0.1, `ray job submit` of
# jobs/distill.py for one language with the tiny-cpu config, then the head is stopped
# through the process that started it (never a machine-wide `ray stop`). Arguments are
# passed on to the job (e.g. --set evaluation.limit=10). Needs nothing from an earlier
# run: no ~/.ray, no caches (the embedded models are built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KAKUGO_VENV:-.venv}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
LANGUAGE=${LANGUAGE:-Scottish Gaelic}
OUTPUT=${OUTPUT:-$PWD/runs/demo}
CONFIG=configs/tiny-cpu.yaml
PORT=${DEMO_RAY_PORT:-6389}
DASH_PORT=${DEMO_DASHBOARD_PORT:-8265}
export PATH="$VENV/bin:$PATH"
export KAKUGO_DATA_DIR=${KAKUGO_DATA_DIR:-$(cd .. && pwd)/shared/data}
export HF_HUB_OFFLINE=1 RAY_DEDUP_LOGS=0
# Token authentication: a token made for this head (unless one is given), passed to the
# head (and so to the job it runs) and to every `ray job` call through the environment.
# Nothing is read from or written to ~/.ray.
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  RAY_AUTH_TOKEN=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))')
fi
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN

ray_dir=$(mktemp -d /tmp/kakugo-ray-XXXXXX)
echo "[demo] starting a local Ray head (log: $ray_dir/head.log)"
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
# --quiet: Ray's, vLLM's and lm-eval's INFO lines and progress bars off; kakugo's own
# progress lines (rows done per engine pass, training steps) stay
ray job submit --address "http://127.0.0.1:$DASH_PORT" --working-dir . \
  --runtime-env-json "{\"env_vars\": {\"KAKUGO_DATA_DIR\": \"$KAKUGO_DATA_DIR\", \"HF_HUB_OFFLINE\": \"1\"}}" \
  -- python jobs/distill.py --config "$CONFIG" --languages "$LANGUAGE" --output "$OUTPUT" \
  --quiet "$@"

stop_head
trap - EXIT
python - "$OUTPUT" "$CONFIG" "$LANGUAGE" "$VENV" <<'EOF'
"""Where to look next: the report's tables, serving and calling the model, the notebook."""
import json
import os
import sys
from pathlib import Path

output, config, language, venv = sys.argv[1:]
tools = os.path.relpath(Path(venv) / "bin")
report = json.loads((Path(output) / "report.json").read_text())
markdown = (Path(output) / "report.md").read_text()
tables = [block for block in markdown.split("\n\n") if block.startswith("| language")]
print(f"\n[demo] done: the report is {output}/report.md\n")
print("\n\n".join(tables))
tuned = next((lang["training"]["served_as"] for lang in report["languages"]
              if lang["training"]), None)
print(f"""
[demo] serve the models behind one OpenAI-compatible API (Ctrl-C stops it):
    {tools}/kakugo serve --config {config} --languages "{language}" --output {output}
  then call the tuned student{f" ({tuned})" if tuned else ""}:
    curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{{"model": "{tuned or "MODEL"}", "messages": [{{"role": "user", "content": "Halò!"}}]}}'
[demo] the results notebook on this run (writes notebooks/results-run.ipynb):
    KAKUGO_RUN={output} {tools}/jupyter execute notebooks/results.ipynb --output=results-run""")
EOF
