"""Bad input, in one table: each case runs the CLI in-process and must exit non-zero with a
message that names what is wrong, leaving the output root as it was (nothing written,
nothing lost). Checks that need a running app or engine are elsewhere: Serve's unknown
model / malformed JSON / oversize body / max_tokens over the limit in
tests/integration/test_serve.py; teacher replies that are empty, cut short or in another
language (rejected with the rule, the run goes on) in tests/unit/test_filters.py."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from kakugo.cli import main

TINY = "configs/tiny-cpu.yaml"


@dataclass
class Case:
    args: list[str]
    exit_code: int
    message: str


def run_args(out: Path, *extra: str, languages: str = "gd") -> list[str]:
    return ["run", "--config", TINY, "--languages", languages, "--output", str(out), *extra]


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def model_dir(tmp: Path, with_tokenizer: bool) -> str:
    folder = tmp / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    if with_tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return str(folder)


# name -> (tmp folder, output root, request) -> Case
CASES = {
    "unknown language": lambda t, o, r: Case(
        ["languages", "Foobarish"], 2, "unknown language 'Foobarish'"),
    "ambiguous language": lambda t, o, r: Case(
        ["languages", "Kurdish"], 2, "ambiguous language 'Kurdish'"),
    "empty language list": lambda t, o, r: Case(
        run_args(o, languages=" , "), 2, "no languages given"),
    "duplicate languages": lambda t, o, r: Case(
        run_args(o, languages="gd,Scottish Gaelic"), 2, "duplicate language"),
    "missing language list file": lambda t, o, r: Case(
        run_args(o, languages=f"@{t / 'nope.txt'}"), 2, "language list file"),
    "missing config file": lambda t, o, r: Case(
        ["run", "--config", str(t / "nope.yaml"), "--languages", "gd"], 2, "does not exist"),
    "malformed YAML": lambda t, o, r: Case(
        ["config", "--config", write(t / "bad.yaml", "teacher: [unclosed\n")], 2,
        "is not valid YAML"),
    "config top level not a mapping": lambda t, o, r: Case(
        ["config", "--config", write(t / "list.yaml", "- teacher\n")], 2,
        "top level must be a mapping"),
    "unknown config key": lambda t, o, r: Case(
        ["config", "--set", "training.learnig_rate=1"], 2, "training.learnig_rate: unknown key"),
    "wrong type": lambda t, o, r: Case(
        ["config", "--set", "training.learning_rate=abc"], 2,
        "training.learning_rate: bad value 'abc'"),
    "negative count": lambda t, o, r: Case(
        ["config", "--set", "generation.topics.macro_topics_per_seed=-1"], 2,
        "generation.topics.macro_topics_per_seed: bad value -1"),
    "fraction above 1": lambda t, o, r: Case(
        ["config", "--set", "generation.revision_fraction=1.5"], 2,
        "generation.revision_fraction: bad value 1.5"),
    "fraction below 0": lambda t, o, r: Case(
        ["config", "--set", "training.validation_fraction=-0.1"], 2,
        "training.validation_fraction: bad value -0.1"),
    "override without =": lambda t, o, r: Case(
        ["config", "--set", "training.learning_rate"], 2, "expected KEY=VALUE"),
    "override into a value": lambda t, o, r: Case(
        ["config", "--set", "seed.x=1"], 2, "seed: bad value {'x': 1}"),
    "min above max": lambda t, o, r: Case(
        ["config", "--set", "generation.topics.min_prompts_per_topic=4"], 2,
        "min_prompts_per_topic"),
    "GPU-only kernel on CPU": lambda t, o, r: Case(
        ["config", "--set", "training.use_gpu=false", "--set", "training.attention=torch_varlen"],
        2, "'torch_varlen' runs on GPUs only"),
    "accelerator without a price": lambda t, o, r: Case(
        ["config", "--set", "cluster.teacher_accelerator_type=B200"], 2,
        "cluster.teacher_accelerator_type is 'B200', which has no price"),
    "model name with a path separator": lambda t, o, r: Case(
        ["config", "--set", "student.name=../etc"], 2, "student.name: bad value '../etc'"),
    "port out of range": lambda t, o, r: Case(
        ["config", "--set", "serving.port=70000"], 2, "serving.port: bad value 70000"),
    "unknown evaluation task": lambda t, o, r: Case(
        ["config", "--set", 'evaluation.tasks=["xnli"]'], 2, "evaluation.tasks.0: bad value"),
    "unknown embedded model": lambda t, o, r: Case(
        ["models", "build", "nope"], 2, "unknown embedded model 'nope'"),
    "nonexistent model path": lambda t, o, r: Case(
        run_args(t / "fresh", "--set", f"student.model={t / 'no-model'}"), 2,
        "does not exist"),
    "model dir without tokenizer": lambda t, o, r: Case(
        run_args(t / "fresh", "--set", f"student.model={model_dir(t, False)}"), 2,
        "has no tokenizer"),
    "unsupported output scheme": lambda t, o, r: Case(
        run_args("gs://bucket/run"), 1, "gs://"),
    "output root not writable": lambda t, o, r: Case(
        run_args(write(t / "a-file", "x") + "/run"), 1, "not writable"),
    "S3 bucket missing": lambda t, o, r: (r.getfixturevalue("s3_server"), Case(
        run_args("s3://kakugo-no-such-bucket/run"), 1,
        "S3 bucket 'kakugo-no-such-bucket' does not exist"))[1],
    "output root of another config": lambda t, o, r: Case(
        run_args(o, "--set", "seed=7"), 2, "different configuration"),
    "serve an unknown model": lambda t, o, r: Case(
        ["serve", "--config", TINY, "--languages", "gd", "--output", str(o), "--models", "nope"],
        2, "nope"),
    "serve with an API key that is not set": lambda t, o, r: (
        r.getfixturevalue("monkeypatch").delenv("KAKUGO_UNSET_KEY", raising=False), Case(
            ["serve", "--config", TINY, "--languages", "gd", "--output", str(o),
             "--deploy-config", str(t / "app.yaml"), "--set",
             "serving.api_key_env=KAKUGO_UNSET_KEY"], 2,
            "serving.api_key_env is 'KAKUGO_UNSET_KEY', but $KAKUGO_UNSET_KEY is not set"))[1],
    "API key variable that is not a name": lambda t, o, r: Case(
        ["config", "--set", "serving.api_key_env=my key"], 2,
        "serving.api_key_env: bad value 'my key'"),
    "a default max_tokens above the limit": lambda t, o, r: Case(
        ["config", "--set", "serving.default_max_tokens=9999"], 2,
        "default_max_tokens (9999) must be <= max_tokens_limit (4096)"),
    "an S3 model key that leads outside its folder": lambda t, o, r: Case(
        run_args(t / "fresh", "--set", f"student.model={traversal_model(r)}"), 1,
        "the key leads outside"),
    "an output root spelled another way is the same run": lambda t, o, r: Case(
        run_args(Path(str(o).replace("/out", "/./out")), "--set", "seed=7"), 2,
        "different configuration"),
}


def traversal_model(request) -> str:
    """An s3:// model prefix with a key that climbs out of it (S3 keeps `..` as written)."""
    import boto3

    server = request.getfixturevalue("s3_server")
    client = boto3.client("s3", endpoint_url=server["AWS_ENDPOINT_URL"])
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="kakugo-traversal")
    client.put_object(Bucket="kakugo-traversal", Key="m/config.json", Body=b"{}")
    client.put_object(Bucket="kakugo-traversal", Key="m/../../escaped", Body=b"x")
    return "s3://kakugo-traversal/m"


@pytest.fixture
def output_root(tmp_path, data_dir):
    """An output root that already holds a run (run.json) and a finished file."""
    from kakugo.config import load_config
    from kakugo.run import open_run, resolve_languages

    out = tmp_path / "out"
    config = load_config(TINY, [f"output={out}", "languages=[gd]"])
    open_run(config, resolve_languages(config))
    (out / "finished.txt").write_text("keep me")
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_a_specific_message(name, tmp_path, output_root, request,
                                                      capsys):
    case = CASES[name](tmp_path, output_root, request)
    before = snapshot(output_root)
    assert main(case.args) == case.exit_code
    assert case.message in capsys.readouterr().err
    assert snapshot(output_root) == before  # nothing written, nothing lost


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25, json.dumps(list(CASES))
