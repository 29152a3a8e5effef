"""Batch orchestration: one run = one config + a batch of languages under one output root.

The CLI (`kakugo run`) and the job script (jobs/distill.py) both call `distill_batch`.
Stages meet only through storage (parquet + manifests); this module decides their order
and what is already done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import asdict

from kakugo import layout, logs
from kakugo.config import RUN_IDENTITY_SECTIONS, RunConfig
from kakugo.errors import ClusterAuthError, RunConflictError
from kakugo.languages import Language, eval_data_dir, resolve_many
from kakugo.models import ModelSource
from kakugo.storage import Storage

log = logging.getLogger("kakugo.run")

# In pipeline order. Each stage skips the work it finds done; the report is rewritten.
STAGES: tuple[str, ...] = ("generate", "dataset", "train", "evaluate", "report")
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL = 0, 1, 3


def resolve_languages(config: RunConfig) -> list[Language]:
    return resolve_many(config.languages, eval_data_dir(config.evaluation.data_dir))


def check_run(config: RunConfig, *, restart: bool = False) -> Storage:
    """The output root, once it is known to be writable and not another config's run."""
    storage = Storage(config.output)
    storage.check_writable()
    digest = config.run_identity()
    previous = storage.read_json(layout.RUN_MANIFEST, default=None)
    if previous is not None and previous.get("config_hash") != digest and not restart:
        raise RunConflictError(
            f"{storage.uri(layout.RUN_MANIFEST)} was written by a different configuration "
            f"of the sections that decide the data ({', '.join(RUN_IDENTITY_SECTIONS)}: "
            f"hash {previous.get('config_hash')}, now {digest}); use a new output root, "
            "or pass --restart to start over there"
        )
    return storage


def open_run(config: RunConfig, languages: list[Language], *, restart: bool = False) -> Storage:
    """Check the output root and record the run; refuse to mix outputs of another config."""
    storage = check_run(config, restart=restart)
    previous = storage.read_json(layout.RUN_MANIFEST, default=None)
    digest = config.run_identity()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    storage.write_json(
        layout.RUN_MANIFEST,
        {
            "name": config.name,
            "config_hash": digest,
            "config": config.model_dump(mode="json"),
            "languages": [asdict(lang) for lang in languages],
            "created": (previous or {}).get("created", now) if not restart else now,
            "updated": now,
        },
    )
    return storage


def own_auth_token() -> None:
    """Token authentication for a local cluster of this process's own, with a token made
    for it and passed to its processes through the environment (as scripts/demo.sh does
    for its head): Ray would otherwise read ~/.ray/auth_token, or write one there on a
    fresh machine. A RAY_AUTH_MODE or RAY_AUTH_TOKEN the user set is kept."""
    import secrets

    if os.environ.get("RAY_AUTH_MODE") is None:
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ["RAY_AUTH_MODE"] == "token":
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    # Ray's core read its settings and token when it was imported: have it read them
    # again (as Ray's own authentication tests do; tests/e2e/test_local_ray.py fails
    # if this stops working)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connect_ray(config: RunConfig) -> None:
    """Join the cluster RAY_ADDRESS names (inside `ray job submit` it is the job's), else
    start a local cluster of this process's own: never join whatever Ray's temp folder
    says last ran here (a head stopped by a signal leaves its address behind). Every
    process of the run gets the libraries' log settings (kakugo.logs.worker_env), merged
    into a job's own runtime env, and so do Ray Serve's settings (kakugo.serving.
    serve_process_env)."""
    import ray

    from kakugo.serving import serve_process_env

    if ray.is_initialized():
        return
    env = {**logs.worker_env(), **serve_process_env(config)}
    address = os.environ.get("RAY_ADDRESS")
    if address:  # a job's runtime env already applies to its tasks
        if os.environ.get("RAY_AUTH_MODE") == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
            # Ray would look in ~/.ray/auth_token: none on a fresh machine, or another's
            raise ClusterAuthError(
                f"RAY_AUTH_MODE=token but RAY_AUTH_TOKEN is not set, so the cluster at "
                f"{address} (RAY_ADDRESS) cannot be joined: export the cluster's token as "
                "RAY_AUTH_TOKEN (cluster/auth_token for the launcher's cluster, the Secret "
                "named after the cluster on KubeRay)")
        log.info("joining the Ray cluster at %s (RAY_ADDRESS)", address)
        ray.init(address=address, runtime_env={"env_vars": env} if env else None)
    else:
        cpus = config.cluster.local_num_cpus
        log.info("starting a local Ray cluster (%s logical CPUs; set RAY_ADDRESS to join "
                 "one)", cpus or "all")
        env["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "0")
        own_auth_token()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                 runtime_env={"env_vars": env})


def run_stage(stage: str, config: RunConfig, languages: list[Language],
              storage: Storage) -> dict:
    """Run (or resume) one stage for the given languages; per-language failures are
    returned under "failed" ({flores_code: error})."""
    if stage != "report":
        connect_ray(config)
    if stage == "generate":  # prompts, responses and translations (stages 1-3)
        from kakugo.generate.pipeline import generate

        return generate(config, languages, storage)
    if stage == "dataset":  # filters and the SFT set of each language (stage 4)
        from kakugo.dataset.stage import build_datasets

        return build_datasets(config, languages, storage)
    if stage == "train":  # full fine-tuning of the student per language (stage 5)
        from kakugo.train.trainer import train

        return train(config, languages, storage)
    if stage == "evaluate":  # base vs tuned student per language, lm-eval (stage 6)
        from kakugo.evaluate.runner import evaluate

        return evaluate(config, languages, storage)
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def distill_batch(config: RunConfig, *, restart: bool = False,
                  stages: tuple[str, ...] = STAGES) -> int:
    """Run `stages` (default: all) for the batch and write the batch report.

    A language that fails in a stage is recorded in status.json and left out of the later
    stages; the others go on. A rerun retries it from the first stage it has not finished.
    Returns EXIT_OK, EXIT_PARTIAL (some languages failed) or EXIT_FAILED (all failed).
    """
    from kakugo.report import write_report

    languages = resolve_languages(config)
    check_run(config, restart=restart)  # bad output roots fail before any model download
    for role, spec in (("teacher", config.teacher.model), ("student", config.student.model)):
        path = ModelSource.parse(spec).materialize()
        log.info("%s model ready: %s", role, path)
    storage = open_run(config, languages, restart=restart)
    log.info("run %s: %d language(s) -> %s", config.name, len(languages), storage.root)
    for lang in languages:
        log.info("  %s", lang)
    codes = {lang.flores_code for lang in languages}
    # failures of stages this run does not redo stay on record; the others are retried
    failed = {code: entry for code, entry in
              storage.read_json(layout.STATUS, default={}).get("failed", {}).items()
              if code in codes and entry["stage"] not in stages}
    for stage in [s for s in STAGES if s in stages and s != "report"]:
        order = STAGES.index(stage)
        active = [lang for lang in languages if lang.flores_code not in failed
                  or STAGES.index(failed[lang.flores_code]["stage"]) > order]
        if not active:
            log.error("%s: no language left to run", stage)
            break
        result = run_stage(stage, config, active, storage)
        for code, error in (result.get("failed") or {}).items():
            log.error("%s failed in %s: %s", code, stage, error)
            failed[code] = {"stage": stage, "error": error}
        storage.write_json(layout.STATUS, {"failed": failed})
    if "report" in stages:
        write_report(config, languages, storage, failed)
    if not failed:
        return EXIT_OK
    log.error("%d of %d language(s) failed: %s", len(failed), len(languages),
              ", ".join(f"{code} ({entry['stage']})" for code, entry in sorted(failed.items())))
    return EXIT_FAILED if len(failed) == len(languages) else EXIT_PARTIAL
