"""Session-wide fixtures for tests that run real engines and workers: a local Ray cluster,
a student trained on a small learnable set (Ray Train + DeepSpeed ZeRO-3, with a worker
killed mid-run), and the Ray Serve app serving the teacher, the base and that student."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from kakugo.accelerators import SERVE_REPLICA_PREFIX
from kakugo.config import load_config
from kakugo.languages import resolve
from kakugo.storage import Storage
from tests.conftest import SERVE_KEY_ENV, TINY_STUDENT


@pytest.fixture(scope="session")
def ray_cluster():
    """A local cluster started as a local run starts its own (kakugo.run.connect_ray): with
    a token made for it, so that Ray neither reads nor writes ~/.ray/auth_token (a token
    left in the home of the machine the tests run on would let a later run that should
    have been refused for want of one join with it)."""
    import ray

    from kakugo.run import own_auth_token

    token_file = Path.home() / ".ray" / "auth_token"
    there_before = token_file.exists()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    own_auth_token()
    # 2 physical cores: more logical CPUs so Ray Data's small stages and an engine fit at once.
    ctx = ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        assert there_before or not token_file.exists(), f"ray.init wrote {token_file}"
        yield ctx
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """One Serve HTTP proxy for the session (on a free port): the engine-pass teacher and
    the served app share it, as the stages of one job do."""
    from ray import serve

    from tests.conftest import free_port

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    return port


COLOURS = ["dearg", "gorm", "uaine", "buidhe"]
OVERRIDES = [
    *TINY_STUDENT, "training.num_workers=2", "training.cpus_per_worker=0.5", "training.learning_rate=0.005",
    "training.warmup_ratio=0", "training.lr_scheduler=constant", "training.cutoff_len=96",
    "training.epochs=3", "training.report_every_steps=2", "training.checkpoint_every_steps=6",
    "training.validation_fraction=0.1", "training.keep_checkpoints=2",
    "training.gradient_checkpointing=true",  # as paper.yaml (the e2e job trains without)
]


def learnable_rows(n: int = 60) -> list[dict]:
    """A set a tiny model can learn: the answer is fixed by the question, and comes after a
    reasoning block in think tags, as in the SFT rows of generated data."""
    rows = []
    for i in range(n):
        colour = COLOURS[i % 4]
        answer = f"<think>\nDath {i % 4}.\n</think>\n\nIs e {colour} an dath."
        rows.append({"id": f"row-{i:03d}", "language": "gla_Latn", "category": "topic",
                     "kind": "generated", "messages": [
                         {"role": "system", "content": "Freagair."},
                         {"role": "user", "content": f"Dath {i % 4}?"},
                         {"role": "assistant", "content": answer}]})
    return rows


@pytest.fixture(scope="session")
def trained(ray_cluster, tmp_path_factory, data_dir):
    from kakugo.train.trainer import train_language

    out = tmp_path_factory.mktemp("train-run")
    storage = Storage(str(out))
    storage.write_parquet("gla_Latn/dataset/data/part-0.parquet",
                          pa.Table.from_pylist(learnable_rows()))
    config = load_config("configs/tiny-cpu.yaml", [*OVERRIDES, f"output={out}"])
    lang = resolve("gd", data_dir)
    marker = out / "fault-injected"
    manifest = train_language(config, lang, storage, fail_at_step=8, fault_marker=str(marker))
    return {"out": out, "storage": storage, "config": config, "lang": lang,
            "manifest": manifest, "marker": marker}


@pytest.fixture(scope="session")
def served(ray_cluster, serve_port, trained):
    """The app of `kakugo serve` on 127.0.0.1: teacher, base student and kakugo-gla."""
    from ray import serve

    from kakugo.serving import served_models, start

    key = "kakugo-test-" + os.urandom(8).hex()
    os.environ[SERVE_KEY_ENV] = key  # what a user exports before `kakugo serve`
    config = load_config("configs/tiny-cpu.yaml", [
        *TINY_STUDENT, f"output={trained['out']}", 'languages=["gd"]',
        f"serving.port={serve_port}", f"serving.api_key_env={SERVE_KEY_ENV}",
        "serving.default_max_tokens=5"])
    models = served_models(config, [trained["lang"]], trained["storage"])
    url = start(config, models)
    try:
        yield {"url": url, "config": config, "models": {m.name: m for m in models},
               "tuned_dir": trained["out"] / "gla_Latn" / "model", "key": key}
    finally:
        serve.shutdown()
        os.environ.pop(SERVE_KEY_ENV, None)


def serve_replica_names(app: str, deployment_prefix: str = "") -> list[str]:
    """The actor names of an app's Serve replicas (those of deployments whose name starts
    with `deployment_prefix`), in Serve's namespace."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve"
            and a["name"].startswith(f"{SERVE_REPLICA_PREFIX}{app}#{deployment_prefix}")]


def serve_replica_pids(app: str, deployment_prefix: str = "") -> dict[str, int]:
    """{replica actor name: pid} of an app's Serve replicas (serve_replica_names)."""
    import ray

    return {name: ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(
        lambda actor: os.getpid())) for name in serve_replica_names(app, deployment_prefix)}


def assert_engine_worker_has_its_cores(replica_pid: int) -> None:
    """On CPU, vLLM binds its worker's threads to cores of their own and reserves the
    others (one of two here) for its other processes: no thread of the engine's replica or
    of its engine core may run on the worker's cores."""
    import psutil

    replica = psutil.Process(replica_pid)
    family = replica.children(recursive=True)
    workers = [p for p in family if p.name().startswith("VLLM::Worker")]
    assert workers, f"no vLLM worker process under the replica {replica_pid}"
    worker_cores = set().union(*(p.cpu_affinity() for p in workers))
    assert worker_cores < set(os.sched_getaffinity(0))  # vLLM left cores to the others
    others = [replica, *(p for p in family if p not in workers)]
    assert any(p.name().startswith("VLLM::EngineCore") for p in others)
    on_worker_cores = [(p.name(), t.id, sorted(os.sched_getaffinity(t.id)))
                       for p in others for t in p.threads()
                       if set(os.sched_getaffinity(t.id)) & worker_cores]
    assert not on_worker_cores, f"worker cores {sorted(worker_cores)}: {on_worker_cores[:5]}"
