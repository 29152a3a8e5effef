import os
import re
import subprocess
import sys

import pytest

from kakugo.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kakugo.cli", *args],
                          capture_output=True, text=True, check=False, timeout=300)


def test_languages_resolves_the_documented_example(data_dir):
    proc = run_cli("languages", "Scottish Gaelic", "gd", "cym_Latn", "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()[1:]
    codes = [re.search(r"\b[a-z]{3}_[A-Z][a-z]{3}\b", ln).group(0) for ln in lines]
    assert codes == ["gla_Latn", "gla_Latn", "cym_Latn"]


def test_languages_default_lists_the_paper_54_with_coverage(capsys, data_dir):
    assert main(["languages", "--json", "--data-dir", str(data_dir)]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 54
    kin = next(r for r in rows if r["flores_code"] == "kin_Latn")
    assert kin["flores200"] and kin["sib200"] and kin["belebele"]


def test_run_refuses_to_mix_configs(tmp_path, data_dir):
    from kakugo.config import load_config
    from kakugo.run import RunConflictError, open_run, resolve_languages

    overrides = [f"output={tmp_path / 'run'}", "languages=[gd]"]
    config = load_config("configs/tiny-cpu.yaml", overrides)
    languages = resolve_languages(config)
    open_run(config, languages)
    open_run(config, languages)  # same config: fine
    changed = load_config("configs/tiny-cpu.yaml", [*overrides, "seed=7"])
    with pytest.raises(RunConflictError, match="different configuration"):
        open_run(changed, languages)
    open_run(changed, languages, restart=True)
    assert open_run(changed, languages).read_json("run.json")["config"]["seed"] == 7


def test_an_error_starts_its_own_line_after_a_progress_bar(capsys, tmp_path):
    """Progress bars leave the cursor mid-line; the error must still start a line."""
    sys.stderr.write("Running requests:  50%|#####     | 2/4\x1b[A   ")
    assert main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2
    lines = capsys.readouterr().err.split("\n")
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors and "missing.yaml" in errors[0], lines


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"kakugo {version('kakugo')}"


def test_an_internal_error_has_its_own_exit_code_and_says_so(capsys, monkeypatch, data_dir):
    """A bug is neither bad input (2) nor a failed run (1): exit 4, the traceback logged."""
    from kakugo import cli

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "paper54", broken)
    assert main(["languages", "--data-dir", str(data_dir)]) == cli.EXIT_INTERNAL == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err
    assert re.search(r"^error: internal error \(KeyError: 'a bug'\)", err, re.MULTILINE)


def test_an_output_root_spelled_three_ways_is_one_run(tmp_path, monkeypatch):
    from kakugo.config import load_config
    from kakugo.run import open_run, resolve_languages

    monkeypatch.chdir(tmp_path)
    for output in ("runs/x", "./runs/x", str(tmp_path / "runs" / "x")):
        config = load_config(None,
                             [f"output={output}", "languages=[gd]"])
        open_run(config, resolve_languages(config))  # no RunConflictError
    assert (tmp_path / "runs" / "x" / "run.json").is_file()


def test_a_run_grows_and_changes_what_does_not_decide_its_data(tmp_path):
    """More languages, other prices, another port or training section: the same run (the
    stages' own hashes decide what is redone); another seed is another run."""
    from kakugo.config import load_config
    from kakugo.run import RunConflictError, open_run, resolve_languages

    base = [f"output={tmp_path / 'run'}"]
    for extra in (["languages=[gd]"], ["languages=[gd, cy]"],
                  ["languages=[gd, cy]", "cluster.price_per_hour.CPU=0.1",
                   "serving.port=8123", "training.learning_rate=1e-4", "progress_every_s=5",
                   "publish.namespace=someone"],
                  # what `kakugo evaluate --url ...` adds on an existing run
                  ["languages=[gd, cy]", "evaluation.url=http://127.0.0.1:9/v1"]):
        config = load_config(None, base + extra)
        open_run(config, resolve_languages(config))
    config = load_config(None, [*base, "languages=[gd]", "seed=7"])
    with pytest.raises(RunConflictError, match="sections that decide the data"):
        open_run(config, resolve_languages(config))


def test_joining_a_token_cluster_without_its_token_is_refused_before_ray_looks_in_home(
        tmp_path, data_dir):
    """RAY_ADDRESS with RAY_AUTH_MODE=token and no RAY_AUTH_TOKEN: Ray would read
    ~/.ray/auth_token, which a fresh machine lacks (or which holds another cluster's token):
    a bad-input error naming the variable, and Ray is never started or joined. Run as its
    own process, as a user runs it: in this one Ray may already be up (the integration
    tests' cluster), and the run would just use it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(HOME=str(home), RAY_ADDRESS="127.0.0.1:9",  # nothing listens there
               RAY_AUTH_MODE="token")
    proc = subprocess.run(
        [sys.executable, "-m", "kakugo.cli", "run", "--config", "configs/tiny-cpu.yaml",
         "--languages", "gd", "--output", str(tmp_path / "out"),
         "--set", f"evaluation.data_dir={data_dir}"],
        capture_output=True, text=True, check=False, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "error: RAY_AUTH_MODE=token but RAY_AUTH_TOKEN is not set" in proc.stderr
    assert "127.0.0.1:9" in proc.stderr
    assert "joining the Ray cluster" not in proc.stderr
    assert not (home / ".ray").exists()
