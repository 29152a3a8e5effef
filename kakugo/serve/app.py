"""The HTTP side of the served app: `KakugoIngress`, a thin subclass of Ray's OpenAI
ingress that refuses, with an OpenAI-style error JSON, what a shared endpoint must refuse:
bodies above `serving.max_request_bytes` (413, counted while reading), malformed JSON or
fields (400 naming the field), `max_tokens` above `serving.max_tokens_limit` (400), and
unknown models (404 listing the served ones). The app itself is built in kakugo.serving.
"""

from __future__ import annotations

import json

from fastapi import Request
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest


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
