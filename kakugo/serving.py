"""The models on Ray Serve, as the stages use them: the teacher's deployment for generation
(`Teacher`) and the one OpenAI-compatible app for the teacher, the base student and every
tuned student (`served_models`, `start`, `stop`; `kakugo serve` and the evaluation).

Built on Ray's own `ray.serve.llm`: one `LLMConfig` per model (vLLM engine, placement
bundles, the GPU type asked for and autoscaling from our config), `build_llm_deployment`
for the teacher and `build_openai_app` for the app, which gives `/v1/models`,
`/v1/chat/completions` (streaming or not) and `/v1/completions` (with `echo` +
`logprobs`) behind kakugo.serve.app.KakugoIngress, a thin subclass of Ray's ingress with
request limits and OpenAI-style errors.

Model names come from the config only and are checked against `MODEL_NAME_RE`; a request's
model name is only ever looked up in that table, never joined to a path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from ray.llm._internal.common.callbacks.base import CallbackBase

from kakugo import logs
from kakugo.config import MODEL_NAME_PATTERN, EngineConfig, ModelServingConfig, RunConfig
from kakugo.errors import ServeConfigError, TeacherPassError
from kakugo.languages import Language
from kakugo.layout import tuned_model_dir
from kakugo.models import ModelSource, tuned_model_name
from kakugo.storage import Storage
from kakugo.teacher import engine_env, engine_kwargs, placement_bundles, teacher_engine_kwargs

log = logging.getLogger("kakugo.serving")

APP_NAME = "kakugo"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
INGRESS_CLS = "kakugo.serve.app:KakugoIngress"
# every engine's deployment class (LLMServer, kept off its vLLM worker's cores on CPU);
# the teacher's adds `chat_row`, which the engine passes call
ENGINE_SERVER_CLS = "kakugo.serve.llm_server:EngineServer"
TEACHER_SERVER_CLS = "kakugo.serve.llm_server:TeacherServer"
NO_MIRROR_CALLBACK = "kakugo.serving:NoMirrorCallback"


def check_model_name(name: str, field: str) -> str:
    if not MODEL_NAME_RE.match(name) or ".." in name:
        raise ServeConfigError(
            f"{field}: model name {name!r} is not allowed; use letters, digits, '.', '_' "
            "and '-' (starting with a letter or digit, no '..', at most 128 characters)")
    return name


@dataclass(frozen=True)
class ServedModel:
    name: str
    source: str  # a model spec: hub id, local dir, s3:// prefix or embedded:NAME
    role: Literal["teacher", "student", "tuned"]
    engine: EngineConfig
    scaling: ModelServingConfig
    engine_extra: dict[str, Any] = field(default_factory=dict)  # the teacher's (see
    # kakugo.teacher.teacher_engine_kwargs)
    accelerator_type: str | None = None  # the GPU type asked for (cluster.*_accelerator_type)


def has_tuned_model(storage: Storage, lang: Language) -> bool:
    """Training exported the language's model whole (a cut export is not served)."""
    return storage.is_complete(tuned_model_dir(lang.flores_code))


def served_models(config: RunConfig, languages: list[Language], storage: Storage,
                  only: list[str] | None = None) -> list[ServedModel]:
    """The teacher, the base student and each language's tuned student that exists.

    `only` picks models by name; asking for one that is unknown or not trained is an error.
    """
    serving = config.serving
    models = [
        ServedModel(check_model_name(config.teacher.name, "teacher.name"), config.teacher.model,
                    "teacher", config.teacher.engine, serving.teacher,
                    teacher_engine_kwargs(config.teacher),
                    config.cluster.teacher_accelerator_type),
        ServedModel(check_model_name(config.student.name, "student.name"), config.student.model,
                    "student", serving.engine, serving.students,
                    accelerator_type=config.cluster.serving_accelerator_type),
    ]
    untrained: dict[str, str] = {}
    for lang in languages:
        name = check_model_name(tuned_model_name(config, lang), "student.tuned_name_template")
        folder = tuned_model_dir(lang.flores_code)
        if has_tuned_model(storage, lang):
            models.append(ServedModel(name, storage.uri(folder), "tuned", serving.engine,
                                      serving.students,
                                      accelerator_type=config.cluster.serving_accelerator_type))
        else:
            untrained[name] = storage.uri(folder)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ServeConfigError(f"served model names must be unique, got {names}")
    for name, where in untrained.items():
        if only is None:
            log.warning("%s is not served: no trained model at %s", name, where)
    if only is None:
        return models
    by_name = {m.name: m for m in models}
    for name in only:
        if name in untrained:
            raise ServeConfigError(f"--models: {name} has no trained model at {untrained[name]}")
        if name not in by_name:
            raise ServeConfigError(f"--models: unknown model {name!r}; available: "
                                   + ", ".join(names + list(untrained)))
    return [by_name[name] for name in dict.fromkeys(only)]


def model_source(spec: str) -> str | dict[str, str]:
    """What `LLMConfig.model_loading_config.model_source` takes for one of our specs:
    s3:// prefixes are mirrored by Ray on the replica's node; embedded models are built
    into the local cache (single-node use)."""
    source = ModelSource.parse(spec)
    if source.kind == "s3":
        return {"bucket_uri": source.spec}
    return source.materialize()


class NoMirrorCallback(CallbackBase):
    """`LLMConfig.callback_config` of a model without a cloud mirror (a local directory or
    a hub id). Ray's node initialisation runs one task per node of a replica that copies
    the model from its mirror; without one the task only hands back the name it was given,
    and starting its worker process is 10-15 s of an engine's start on a small machine.
    The engine loads the model from the name as given."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


def llm_config(model: ServedModel, seed: int | None = None) -> dict[str, Any]:
    """One `ray.serve.llm.LLMConfig`, as the plain dict that `serve deploy` files hold."""
    scaling = model.scaling
    source = model_source(model.source)
    mirrored = isinstance(source, dict)
    return {
        "model_loading_config": {"model_id": model.name, "model_source": source},
        **({} if mirrored else {"callback_config": {"callback_class": NO_MIRROR_CALLBACK}}),
        "engine_kwargs": engine_kwargs(model.engine, seed=seed, extra=model.engine_extra),
        # Ray adds `accelerator_type:<TYPE>` to every bundle: the autoscaler starts a node
        # that has it (Ray refuses a type on CPU engines)
        **({"accelerator_type": model.accelerator_type}
           if model.accelerator_type and model.engine.accelerator == "gpu" else {}),
        "placement_group_config": {"bundles": placement_bundles(model.engine),
                                   "strategy": "PACK"},
        "deployment_config": {"autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(1, scaling.min_replicas),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        }, "logging_config": logs.serve_logging_config()},
        "runtime_env": {"env_vars": engine_env(model.engine)},
        "server_cls": TEACHER_SERVER_CLS if model.role == "teacher" else ENGINE_SERVER_CLS,
    }


def key_digest(key: str) -> str:
    """What the app is given instead of the API key itself (its deployment arguments are
    kept by Ray Serve and shown in `serve deploy` files)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_digest(config: RunConfig) -> str | None:
    """The digest of the API key named by `serving.api_key_env` (None: no key). The key
    itself is read from this process's environment and never stored or logged."""
    name = config.serving.api_key_env
    if name is None:
        return None
    key = os.environ.get(name, "").strip()
    if not key:
        raise ServeConfigError(f"serving.api_key_env is {name!r}, but ${name} is not set "
                               "(or empty) here: export the key, or set api_key_env: null "
                               "to serve without one")
    return key_digest(key)


def serving_args(config: RunConfig, models: list[ServedModel]) -> dict[str, Any]:
    """The argument of `ray.serve.llm.build_openai_app` (an `LLMServingArgs`)."""
    s = config.serving
    return {
        "llm_configs": [llm_config(m) for m in models],
        "ingress_deployment_config": {"logging_config": logs.serve_logging_config()},
        "ingress_cls_config": {
            "ingress_cls": INGRESS_CLS,
            "ingress_extra_kwargs": {
                "max_request_bytes": s.max_request_bytes,
                "max_tokens_limit": s.max_tokens_limit,
                "default_max_tokens": s.default_max_tokens,
                "max_n": s.max_n,
                "api_key_sha256": api_key_digest(config),
            },
        },
    }


def deploy_config(config: RunConfig, models: list[ServedModel]) -> dict[str, Any]:
    """A `serve deploy` config file (Ray Serve's own format) for the same app."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": config.serving.host, "port": config.serving.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": "ray.serve.llm:build_openai_app",
            "args": serving_args(config, models),
        }],
    }


def base_url(config: RunConfig) -> str:
    return f"http://{config.serving.host}:{config.serving.port}/v1"


def serve_process_env(config: RunConfig) -> dict[str, str]:
    """Ray Serve's own settings for its processes (controller, proxy, replicas and the
    handles in Ray Data's actors), which read them from their environment: for `ray.init`'s
    runtime env, which every process of the run inherits. At Ray's defaults Serve's loops
    cost about 0.2 cores with no request at all (benchmarks/serving.py); on a small
    machine whose cores the engines keep busy, that time is taken from the engines.
    Variables already set here (by the user, or a job's own runtime env) are left to them."""
    s = config.serving
    env = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": str(s.control_loop_interval_s),
           "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": str(s.metrics_export_interval_ms)}
    return {k: v for k, v in env.items() if k not in os.environ}


def ensure_serve(config: RunConfig) -> None:
    """Start Ray Serve on the connected cluster if it is not running: one HTTP proxy, on the
    head node, at `serving.host:serving.port` (a no-op when Serve is already up)."""
    from ray import serve

    serve.start(proxy_location="HeadOnly",
                http_options={"host": config.serving.host, "port": config.serving.port},
                logging_config=logs.serve_logging_config())


def start(config: RunConfig, models: list[ServedModel]) -> str:
    """Deploy the app on the connected Ray cluster, wait until it is ready; the base URL."""
    from ray import serve
    from ray.serve.llm import build_openai_app

    ensure_serve(config)
    log.info("serving %s", ", ".join(f"{m.name} ({m.role})" for m in models))
    serve.run(build_openai_app(serving_args(config, models)), name=APP_NAME, route_prefix="/",
              blocking=False)
    url = base_url(config)
    key_env = config.serving.api_key_env
    check_reachable(url, headers={"Authorization": f"Bearer {os.environ[key_env]}"}
                    if key_env else None)
    return url


def answering(url: str, timeout: float, headers: dict[str, str] | None = None) -> bool:
    """Whether an OpenAI-compatible server answers `GET {url}/models` within `timeout` s."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=5, headers=headers).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def check_reachable(url: str, timeout: float = 30,
                    headers: dict[str, str] | None = None) -> None:
    """The deployed app answers at `url`; else a clear error (Serve was already running on
    this cluster with another host/port, whose proxy the config cannot change)."""
    if not answering(url, timeout, headers):
        raise ServeConfigError(
            f"the app is deployed but nothing answers at {url}: Ray Serve is probably "
            "already running on this cluster with other HTTP options (serving.host/port "
            "apply only when kakugo starts Serve); use that address or `serve shutdown`")


def stop() -> None:
    from ray import serve

    serve.delete(APP_NAME)


# --------------------------------------------------------------------------- the teacher

TEACHER_APP = "kakugo-teacher"


def processor_actors(engine: EngineConfig, rows: int | None = None) -> int:
    """Ray Data actors that feed the teacher. Each keeps one batch of `batch_size` requests
    in flight and takes the next only when the whole batch is back, so one actor per
    replica leaves the engine running fewer and fewer sequences as each batch drains
    (0.65 of the engine's own tokens/s at steady state; 1.05 with these, measured side by
    side by benchmarks/generation.py). Enough actors for `max_num_seqs` requests per
    replica plus one batch waiting keep every engine full, for the most replicas the
    teacher scales to; and no more than a pass of `rows` rows has batches (each actor is
    a process started for the pass)."""
    per_replica = -(-engine.max_num_seqs // engine.batch_size) + 1
    actors = (engine.max_replicas or engine.replicas) * per_replica
    return actors if rows is None else max(1, min(actors, -(-rows // engine.batch_size)))


class Teacher:
    """The teacher as one Ray Serve LLM deployment, for all the engine passes of a stage.

    `with Teacher(config) as teacher:` deploys it and deletes it at the end. It keeps
    `teacher.engine.replicas` vLLM engines (each on its placement bundles; Serve restarts a
    replica that dies); with `teacher.engine.max_replicas` Serve adds replicas while
    more than `max_num_seqs` requests per replica are in flight and removes them as the
    work runs out. `replica_seconds()` counts the replicas held.
    """

    CLOCK_PERIOD_S = 2.0

    def __init__(self, config: RunConfig):
        self.config = config
        self.deployment: str | None = None
        self._deployed_at = 0.0
        self._held = 0.0  # replica-seconds counted by the clock (autoscaling only)
        self._stop = threading.Event()
        self._clock: threading.Thread | None = None

    @property
    def autoscaling(self) -> bool:
        e = self.config.teacher.engine
        return (e.max_replicas or e.replicas) > e.replicas

    def __enter__(self) -> Self:
        from ray import serve
        from ray.serve.llm import LLMConfig, build_llm_deployment

        t = self.config.teacher
        started = time.monotonic()
        ensure_serve(self.config)
        app = build_llm_deployment(LLMConfig(**self.llm_config()))
        serve.run(app, name=TEACHER_APP, route_prefix=None)
        self.deployment = next(iter(serve.status().applications[TEACHER_APP].deployments))
        self._deployed_at = time.monotonic()
        if self.autoscaling:
            self._stop.clear()
            self._clock = threading.Thread(target=self._count_replicas, daemon=True,
                                           name="teacher-replica-clock")
            self._clock.start()
        log.info("teacher %s ready in %.0f s (%s replica(s))", t.name,
                 self._deployed_at - started, f"{t.engine.replicas} to {t.engine.max_replicas}"
                 if self.autoscaling else t.engine.replicas)
        return self

    def llm_config(self) -> dict[str, Any]:
        """The deployment's `LLMConfig` (as a dict): our engine settings, the GPU type asked
        for, and Serve autoscaling between `replicas` and `max_replicas` with a full engine
        (`max_num_seqs` requests in flight) per replica as the target."""
        t = self.config.teacher
        scaling = ModelServingConfig(min_replicas=t.engine.replicas,
                                     max_replicas=t.engine.max_replicas or t.engine.replicas,
                                     target_ongoing_requests=t.engine.max_num_seqs)
        model = ServedModel(t.name, t.model, "teacher", t.engine, scaling,
                            teacher_engine_kwargs(t),
                            accelerator_type=self.config.cluster.teacher_accelerator_type)
        settings = llm_config(model, seed=self.config.seed)
        # one access-log line per request would flood the job's log (100k+ requests)
        settings["deployment_config"]["logging_config"] = logs.serve_logging_config(
            access_log=False)
        return settings

    def __exit__(self, *exc_info) -> None:
        from ray import serve

        self._stop.set()
        if self._clock is not None:
            self._clock.join(timeout=30)
            self._clock = None
        serve.delete(TEACHER_APP)
        self.deployment = None

    def running_replicas(self) -> int:
        from ray import serve

        status = serve.status().applications[TEACHER_APP].deployments[self.deployment]
        return int(status.replica_states.get("RUNNING", 0))

    def _count_replicas(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.CLOCK_PERIOD_S):
            try:
                running = self.running_replicas()
            except Exception:  # the controller is busy or restarting: count the next tick
                log.debug("teacher replica count failed", exc_info=True)
                continue
            now = time.monotonic()
            self._held += running * (now - last)
            last = now

    def replica_seconds(self) -> float:
        """Replica-seconds held since the deployment was ready."""
        if self.autoscaling:
            return self._held
        return self.config.teacher.engine.replicas * (time.monotonic() - self._deployed_at)

    def device(self) -> str:
        """The accelerator type the replicas run on (kakugo.accelerators.device_of)."""
        from kakugo.accelerators import device_of, serve_replica_nodes

        return device_of(serve_replica_nodes(TEACHER_APP),
                         gpu=self.config.teacher.engine.accelerator == "gpu",
                         requested=self.config.cluster.teacher_accelerator_type)

    def processor_config(self, request_timeout_s: float | None = None,
                         rows: int | None = None):
        """Ray Data's processor settings for a pass of `rows` rows (None: any number)."""
        from ray.data.llm import ServeDeploymentProcessorConfig

        if self.deployment is None:
            raise RuntimeError("the teacher is not deployed: use `with Teacher(config)`")
        engine = self.config.teacher.engine
        return ServeDeploymentProcessorConfig(
            deployment_name=self.deployment, app_name=TEACHER_APP,
            batch_size=engine.batch_size, concurrency=processor_actors(engine, rows),
            should_continue_on_error=True, request_timeout_s=request_timeout_s)

    def wait_until_running(self, timeout_s: float = 1800) -> None:
        """Until Serve reports the teacher app running again (a lost replica is replaced)."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            app = serve.status().applications.get(TEACHER_APP)
            status = app.status if app else None
            if status == "RUNNING":
                return
            time.sleep(2)
        raise TeacherPassError(f"the teacher app {TEACHER_APP} is not running after "
                               f"{timeout_s:.0f} s (status {status})")
