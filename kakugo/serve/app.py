"""One OpenAI-compatible Ray Serve app for the teacher, the base student and every tuned
student of a run.

Built on Ray's own `ray.serve.llm`: one `LLMConfig` per model (vLLM engine, placement
bundles and autoscaling from our config) and `build_openai_app`, which gives
`/v1/models`, `/v1/chat/completions` (streaming or not) and `/v1/completions` (with
`echo` + `logprobs`). The only thing added is `KakugoIngress`, a thin subclass of Ray's
ingress that refuses, with an OpenAI-style error JSON, what a shared endpoint must refuse:
bodies above `serving.max_request_bytes` (413, counted while reading), malformed JSON or
fields (400 naming the field), `max_tokens` above `serving.max_tokens_limit` (400), and
unknown models (404 listing the served ones).

Model names come from the config only and are checked against `MODEL_NAME_RE`; a request's
model name is only ever looked up in that table, never joined to a path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from kakugo import logs
from kakugo.config import MODEL_NAME_PATTERN, EngineConfig, ModelServingConfig, RunConfig
from kakugo.languages import Language
from kakugo.models import ModelSource, tuned_model_dir, tuned_model_name
from kakugo.serve import ServeConfigError
from kakugo.storage import Storage
from kakugo.teacher import engine_env, engine_kwargs, placement_bundles, teacher_engine_kwargs

log = logging.getLogger("kakugo.serve")

APP_NAME = "kakugo"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
INGRESS_CLS = "kakugo.serve.app:KakugoIngress"
NO_MIRROR_CALLBACK = "kakugo.serve.app:NoMirrorCallback"


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
    return storage.exists(f"{tuned_model_dir(lang.flores_code)}/config.json")


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
    }


def serving_args(config: RunConfig, models: list[ServedModel]) -> dict[str, Any]:
    """The argument of `ray.serve.llm.build_openai_app` (an `LLMServingArgs`)."""
    return {
        "llm_configs": [llm_config(m) for m in models],
        "ingress_deployment_config": {"logging_config": logs.serve_logging_config()},
        "ingress_cls_config": {
            "ingress_cls": INGRESS_CLS,
            "ingress_extra_kwargs": {
                "max_request_bytes": config.serving.max_request_bytes,
                "max_tokens_limit": config.serving.max_tokens_limit,
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
    check_reachable(url)
    return url


def answering(url: str, timeout: float) -> bool:
    """Whether an OpenAI-compatible server answers `GET {url}/models` within `timeout` s."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def check_reachable(url: str, timeout: float = 30) -> None:
    """The deployed app answers at `url`; else a clear error (Serve was already running on
    this cluster with another host/port, whose proxy the config cannot change)."""
    if not answering(url, timeout):
        raise ServeConfigError(
            f"the app is deployed but nothing answers at {url}: Ray Serve is probably "
            "already running on this cluster with other HTTP options (serving.host/port "
            "apply only when kakugo starts Serve); use that address or `serve shutdown`")


def stop() -> None:
    from ray import serve

    serve.delete(APP_NAME)


# --------------------------------------------------------------------------- the ingress


class RequestRefused(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code)

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.kind, "param": self.param,
            "code": self.code or str(self.status)}})


class KakugoIngress(OpenAiIngress):
    """Ray's OpenAI ingress plus request limits and OpenAI-style 400/404/413 errors."""

    def __init__(self, llm_deployments, model_cards, *, max_request_bytes: int = 1_000_000,
                 max_tokens_limit: int = 4096, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.max_request_bytes = max_request_bytes
        self.max_tokens_limit = max_tokens_limit

    async def completions(self, request: Request):  # POST /v1/completions
        try:
            body = await self._checked(request, CompletionRequest)
        except RequestRefused as refused:
            return refused.response()
        return await super().completions(body, request)

    async def chat(self, request: Request):  # POST /v1/chat/completions
        try:
            body = await self._checked(request, ChatCompletionRequest)
        except RequestRefused as refused:
            return refused.response()
        return await super().chat(body, request)

    async def _checked(self, request: Request, model_cls):
        from pydantic import ValidationError

        raw = await self._read_body(request)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestRefused(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise RequestRefused(400, "request body must be a JSON object")
        try:
            body = model_cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "body"
            raise RequestRefused(400, f"{field}: {error['msg']}", param=field) from None
        if body.model not in self._model_cards:
            raise RequestRefused(
                404, f"model {body.model!r} does not exist; available: "
                + ", ".join(sorted(self._model_cards)), param="model",
                kind="not_found_error", code="model_not_found")
        for field in ("max_tokens", "max_completion_tokens"):
            value = getattr(body, field, None)
            if value is not None and value > self.max_tokens_limit:
                raise RequestRefused(
                    400, f"{field}: {value} is above this server's limit of "
                    f"{self.max_tokens_limit}", param=field)
        return body

    async def _read_body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRefused(413, f"request body of {declared} bytes is above the limit of "
                                 f"{limit} bytes", code="request_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise RequestRefused(413, f"request body is above the limit of {limit} bytes",
                                     code="request_too_large")
        return bytes(raw)
