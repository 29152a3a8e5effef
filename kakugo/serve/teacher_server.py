"""The teacher's deployment class: Ray Serve LLM's `LLMServer` with one more method,
`chat_row`, which the engine passes call (kakugo.generate.engine_pass). It takes a chat
request as a plain dict and yields the reply as one, so the Ray Data actors that feed the
teacher handle only dicts. With `LLMServer.chat` they would build vLLM's request object and
receive vLLM's response object, and a process that does either imports vLLM: about 17 s of
CPU for each feeding actor of each pass on 2 cores, most of a small pass's time
(docs/benchmarks.md). The request is built here, in the replica, where vLLM is loaded; a
request vLLM's type refuses fails as it would have in the actor (a pydantic
ValidationError, which Ray Data's stage reports as that row's error).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from ray.serve.llm import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest


class TeacherServer(LLMServer):
    async def chat_row(self, fields: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """`chat` on `ChatCompletionRequest(**fields)`, each reply as its `model_dump()`
        (what Ray Data's stage makes of a pydantic reply)."""
        replies = await self.chat(ChatCompletionRequest(**fields))
        async for reply in replies:
            yield reply.model_dump() if isinstance(reply, BaseModel) else reply
