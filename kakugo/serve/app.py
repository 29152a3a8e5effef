"""The HTTP side of the served app: `KakugoIngress`, a thin subclass of Ray's OpenAI
ingress that refuses, with an OpenAI-style error JSON, what a shared endpoint must refuse:
a request without the API key when one is set (401, every route of the ingress; Serve's
own health routes stay open), bodies above `serving.max_request_bytes` (413, counted
while reading), malformed JSON or fields (400 naming the field), `max_tokens` above
`serving.max_tokens_limit` and `n` / `best_of` above `serving.max_n` (400), and unknown
models (404 listing the served ones). A request without `max_tokens` gets
`serving.default_max_tokens`. The app itself is built in kakugo.serving.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import json

from fastapi import Request
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from kakugo.serving import key_digest


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


def _keyed(route):
    """An ingress route that answers only with the API key (when one is set). The route
    keeps its signature for FastAPI, with the request added where it had none."""
    signature = inspect.signature(route)
    has_request = "request" in signature.parameters

    @functools.wraps(route)
    async def keyed(self, *args, **kwargs):
        request = kwargs["request"] if has_request else kwargs.pop("request")
        refused = self._unauthorized(request)
        if refused is not None:
            return refused.response()
        return await route(self, *args, **kwargs)

    if not has_request:
        keyed.__signature__ = signature.replace(parameters=[
            *signature.parameters.values(),
            inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request)])
    return keyed


class KakugoIngress(OpenAiIngress):
    """Ray's OpenAI ingress plus an API key, request limits and OpenAI-style errors."""

    def __init__(self, llm_deployments, model_cards, *, max_request_bytes: int = 1_000_000,
                 max_tokens_limit: int = 4096, default_max_tokens: int = 512,
                 max_n: int = 4, api_key_sha256: str | None = None, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.max_request_bytes = max_request_bytes
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n
        self.api_key_sha256 = api_key_sha256

    def _unauthorized(self, request: Request) -> RequestRefused | None:
        if self.api_key_sha256 is None:
            return None
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                key_digest(key.strip()), self.api_key_sha256):
            return None
        return RequestRefused(401, "missing or wrong API key: send the header "
                              "`Authorization: Bearer <key>`", kind="invalid_request_error",
                              code="invalid_api_key")

    # every route of Ray's ingress, behind the key
    models = _keyed(OpenAiIngress.models)
    model_data = _keyed(OpenAiIngress.model_data)
    embeddings = _keyed(OpenAiIngress.embeddings)
    transcriptions = _keyed(OpenAiIngress.transcriptions)
    score = _keyed(OpenAiIngress.score)
    tokenize = _keyed(OpenAiIngress.tokenize)
    detokenize = _keyed(OpenAiIngress.detokenize)

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

        refused = self._unauthorized(request)
        if refused is not None:
            raise refused
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
        for field in ("n", "best_of"):
            value = getattr(body, field, None)
            if value is not None and value > self.max_n:
                raise RequestRefused(400, f"{field}: {value} is above this server's limit of "
                                     f"{self.max_n}", param=field)
        if getattr(body, "max_tokens", None) is None and \
                getattr(body, "max_completion_tokens", None) is None:
            body.max_tokens = self.default_max_tokens  # else a reply may run to the context
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
