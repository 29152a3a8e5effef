"""The deployment classes of our vLLM engines, each Ray Serve LLM's `LLMServer` (given
as `LLMConfig.server_cls`):

- `EngineServer`, every model's: on CPU it keeps its own threads and the engine core's off
  the cores vLLM binds its worker to (`keep_off_worker_cores`).
- `TeacherServer`, the teacher's: one more method, `chat_row`, which the engine passes call
  (kakugo.generate.engine_pass). It takes a chat request as a plain dict and yields the
  reply as one, so the Ray Data actors that feed the teacher handle only dicts. With
  `LLMServer.chat` they would build vLLM's request object and receive vLLM's response
  object, and a process that does either imports vLLM: about 17 s of CPU for each feeding
  actor of each pass on 2 cores, most of a small pass's time (docs/benchmarks.md). The
  request is built here, in the replica, where vLLM is loaded; a request vLLM's type
  refuses fails as it would have in the actor (a pydantic ValidationError, which Ray
  Data's stage reports as that row's error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from ray.serve.llm import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest

log = logging.getLogger(__name__)


def keep_off_worker_cores() -> tuple[set[int], set[int]] | None:
    """vLLM on CPU binds its worker's threads to cores of their own and reserves the others
    for its other processes, but only its worker is bound: this process (the engine's
    front end) and the engine core, which schedules each step, may still run on the
    worker's cores, and each step of the engine then waits for them. Binds every thread of
    this process and of its other engine processes to the cores the worker does not use.
    Returns (worker cores, the others' cores), or None where there is nothing to do (no
    bound worker: a GPU engine, or `VLLM_CPU_OMP_THREADS_BIND=nobind`; no core left)."""
    import psutil

    if not hasattr(os, "sched_setaffinity"):
        return None
    me = psutil.Process()
    mine = set(os.sched_getaffinity(0))
    cores = {p: set(p.cpu_affinity()) for p in me.children(recursive=True)}
    bound = [p for p, theirs in cores.items() if theirs < mine]  # vLLM's workers
    if not bound:
        return None
    worker_cores = set().union(*(cores[p] for p in bound))
    rest = mine - worker_cores
    if not rest:
        return None
    for proc in [me, *(p for p in cores if p not in bound)]:
        for thread in proc.threads():
            try:
                os.sched_setaffinity(thread.id, rest)
            except (ProcessLookupError, PermissionError):  # ended, or not ours to move
                continue
    return worker_cores, rest


class EngineServer(LLMServer):
    async def start(self):
        await super().start()
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and (cores := keep_off_worker_cores()):
            log.info("vLLM's worker runs on cores %s; the replica and the engine core keep "
                     "to cores %s", sorted(cores[0]), sorted(cores[1]))


class TeacherServer(EngineServer):
    async def chat_row(self, fields: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """`chat` on `ChatCompletionRequest(**fields)`, each reply as its `model_dump()`
        (what Ray Data's stage makes of a pydantic reply)."""
        replies = await self.chat(ChatCompletionRequest(**fields))
        async for reply in replies:
            yield reply.model_dump() if isinstance(reply, BaseModel) else reply
