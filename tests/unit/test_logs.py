"""kakugo's own log lines and how loud the libraries are (`--quiet`)."""

import logging
import os
import re
import subprocess
import sys

import pytest

from kakugo import logs


@pytest.fixture
def saved_logging(monkeypatch):
    """Restore the loggers and the quiet setting this test changes."""
    monkeypatch.delenv(logs.QUIET_ENV, raising=False)
    names = ("", "kakugo", *logs.LIBRARY_LOGGERS)
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate


def test_kakugo_log_lines_stay_text_after_ray_llm_sets_json_logging(capsys, saved_logging):
    """Importing Ray's LLM modules puts a JSON handler on the root logger."""
    from ray.llm._internal.batch.observability.logging.setup import setup_logging

    logs.configure(verbose=False)
    setup_logging()  # what `import ray.data.llm` / `ray.serve.llm` does
    logging.getLogger("kakugo.run").info("run demo: 1 language(s)")
    err = capsys.readouterr().err
    line = r"^\S+ \S+ INFO kakugo\.run: run demo: 1 language\(s\)$"
    assert re.search(line, err, re.MULTILINE), err
    assert '"message"' not in err


def test_loud_by_default_quiet_on_request(saved_logging, monkeypatch):
    for key in logs.QUIET_LIBRARY_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(logs, "_set_here", {})
    logs.configure()
    assert not logs.quiet() and logs.worker_env() == {}
    assert logs.serve_logging_config() == {"log_level": "INFO", "enable_access_log": True}
    # a variable the user (or a job's runtime env) set stays theirs
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    logs.set_quiet(True)
    logs.configure()
    env = logs.worker_env()
    assert "VLLM_LOGGING_LEVEL" not in env and os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and env["TQDM_DISABLE"] == "1"
    assert os.environ["TQDM_DISABLE"] == "1"  # this process's libraries too
    assert logs.serve_logging_config() == {"log_level": "WARNING", "enable_access_log": False}
    import ray.data

    assert ray.data.DataContext.get_current().enable_progress_bars is False
    ray.data.DataContext.get_current().enable_progress_bars = True


def test_quiet_driver_keeps_kakugo_lines_and_drops_library_info():
    """In a fresh process, as the CLI runs: Ray's LLM modules imported later (as the stages
    do) do not bring the root logger's INFO lines back."""
    code = (
        "import logging\n"
        "from kakugo import logs\n"
        "logs.set_quiet(True); logs.configure()\n"
        "import ray.data.llm, ray.serve.llm\n"
        "logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
        "logging.getLogger('ray.data').info('Running Dataset')\n"
        "logging.getLogger('kakugo.generate').info('generate/seeds: 3/15 rows')\n"
        "logging.getLogger('vllm').warning('a real warning')\n"
        "logging.getLogger('lm_eval.api').warning('a warning through the root logger')\n"
        "from tqdm import tqdm\n"
        "for _ in tqdm(range(3), desc='Requesting API'): pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    text = out.stdout + out.stderr
    assert "INFO kakugo.generate: generate/seeds: 3/15 rows" in text
    assert "a real warning" in text
    assert "fontManager" not in text and "Running Dataset" not in text, text
    assert "Requesting API" not in text
    assert re.search(r"^\S+ \S+ WARNING lm_eval.api: a warning through the root logger$", text,
                     re.MULTILINE), text  # plain, not Ray's JSON
    assert '{"asctime"' not in text


def test_cli_accepts_verbose_and_quiet_after_the_subcommand(monkeypatch):
    from kakugo.cli import build_parser

    monkeypatch.delenv(logs.QUIET_ENV, raising=False)
    args = build_parser().parse_args(["run", "--config", "c.yaml", "-q", "-v"])
    assert args.quiet and args.verbose
    args = build_parser().parse_args(["-q", "run", "--config", "c.yaml"])
    assert args.quiet and not args.verbose
