"""The README's main command as a newcomer runs it: `scripts/demo.sh` itself (what `make
demo` runs after the install), from an empty home directory (no ~/.ray, no ~/.cache: the
embedded models, DeepSpeed's op and every cache are made on the way) and with no Ray
variable in the environment.

To stay inside the test budget the teacher is the tiny random model (the e2e job's), the
replies are short and training stops after two steps; the student is the demo's own
(SmolLM2-135M-Instruct), so the base scores are a real model's and must beat chance.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

CHANCE_SIB200 = 100 / 7  # seven topics


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    home, output = root / "home", root / "demo"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "AWS_", "KAKUGO_CACHE", "TORCH_EXTENSIONS", "HF_HOME"))}
    env.update(HOME=str(home), OUTPUT=str(output), KAKUGO_VENV=os.path.relpath(
        Path(sys.executable).parent.parent, REPO), DEMO_RAY_PORT=str(free_port()),
        DEMO_DASHBOARD_PORT=str(free_port()))
    overrides = [
        "teacher.model=embedded:tiny-granite", "teacher.reasoning=none",
        "teacher.sampling.list_item_max_chars=60", "teacher.sampling.max_tokens=24",
        "translation.max_tokens=24", "filters.basic=annotate",
        "filters.min_rows_per_language=2", "training.max_steps=2", "training.epochs=2",
        # SIB-200 only: FLORES through the Serve app is tests/integration/test_evaluate.py's
        'evaluation.tasks=["sib200"]', "evaluation.limit=20",
        "evaluation.max_gen_tokens=24", "progress_every_s=2",
        f"serving.port={free_port()}"]
    args = [a for item in overrides for a in ("--set", item)]
    proc = subprocess.run(["bash", "scripts/demo.sh", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2300, check=False)
    (root / "demo.log").write_text(proc.stdout + proc.stderr)  # for a failure's reader
    return {"proc": proc, "home": home, "output": output,
            "lines": [ln for ln in proc.stdout.splitlines() if ln.strip()]}


def test_the_demo_runs_from_an_empty_home_and_says_where_to_look(demo):
    proc, output = demo["proc"], demo["output"]
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"[demo] done: the report is {output}/report.md" in out
    assert "| gla_Latn | sib200 | acc |" in out  # the report's evaluation table
    assert f"kakugo serve --config configs/tiny-cpu.yaml --languages \"Scottish Gaelic\" " \
           f"--output {output}" in out
    assert '"model": "kakugo-gla"' in out
    assert f"KAKUGO_RUN={output} .venv/bin/jupyter execute notebooks/results.ipynb" in out
    # the head's token was made for it and never written to the home directory
    assert not (demo["home"] / ".ray" / "auth_token").exists()
    assert (demo["home"] / ".cache" / "kakugo" / "models").is_dir()  # built on the way


def test_the_base_student_beats_chance(demo):
    report = json.loads((demo["output"] / "report.json").read_text())
    (lang,) = report["languages"]
    assert lang["status"] == "done"
    sib = next(row for row in lang["evaluation"] if row["task"] == "sib200")
    assert sib["base"] > CHANCE_SIB200 and sib["tuned"] is not None, sib


def test_kakugo_progress_stands_out_among_the_libraries_lines(demo):
    lines = demo["lines"]
    ours = [ln for ln in lines if " kakugo." in ln or ln.startswith("[demo]")]
    # Ray's, vLLM's and lm-eval's INFO lines, JSON lines and progress bars are off
    for noise in ("logging_progress.py", "Requesting API", "Parquet dataset sampling",
                  "Loading safetensors checkpoint", "POST /v1/completions"):
        assert not [ln for ln in lines if noise in ln], noise
    assert not [ln for ln in lines if ln.startswith('{"asctime"')]
    # (kakugo's are about 3 in 10 lines: most of the rest are the libraries' warnings)
    assert len(ours) > len(lines) / 4, "\n".join(lines[-80:])
    # each engine pass reports rows done per language as its batches come back
    progress = [ln for ln in lines if re.search(r"generate/respond: \d+/\d+ rows", ln)]
    assert progress and "gla_Latn" in progress[-1] and "(100%)" in progress[-1]
    assert re.search(r"kakugo\.train: gla_Latn step 2/2, loss", demo["proc"].stdout)
