"""A benchmark stand-in for the teacher: a Ray Serve deployment that answers every chat
request at once with a schema-valid reply, so that the pipeline around the teacher (Ray
Data, the Serve handle, pre- and post-processing, parquet, the dataset stage) is what a
benchmark measures. Used by `scaling.py --paper-scale` only; never by tests of behaviour.

List calls get exactly the count their schema asks for (distinct items), translations the
source's own turns (the length-ratio check passes), free text a few words. Token counts
are words (there is no tokenizer behind it).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from kakugo.serving import TEACHER_APP, Teacher, ensure_serve

STANDIN_DEPLOYMENT = "BenchmarkStandinTeacher"


def _schema(request: dict[str, Any]) -> dict[str, Any] | None:
    spec = (request.get("structured_outputs") or {}).get("json")
    if spec is None:
        return None
    return json.loads(spec) if isinstance(spec, str) else spec


def _source_turns(text: str) -> list[dict[str, str]]:
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(value, dict) and "turns" in value:
            return value["turns"]
    return []


def reply_text(request: dict[str, Any]) -> str:
    """The stand-in's answer to one chat request (the fields the engine pass sends)."""
    user = request["messages"][-1]["content"]
    tag = hashlib.blake2b(user.encode("utf-8"), digest_size=6).hexdigest()
    schema = _schema(request)
    if schema is None:
        return f"Freagairt {tag}: tha seo na fhreagairt ghoirid."
    spec = schema["properties"]
    if "items" in spec:
        n = spec["items"]["minItems"]
        return json.dumps({"items": [f"nì {tag} {i}" for i in range(n)]})
    return json.dumps({"turns": _source_turns(user)}, ensure_ascii=False)


class StandinTeacher:
    """The deployment: the `chat_row` method Ray Data's Serve stage calls on the teacher
    (kakugo.serve.llm_server), as a stream of one reply shaped like the dict of vLLM's
    ChatCompletionResponse."""

    async def chat_row(self, request: dict[str, Any]):
        text = reply_text(request)
        prompt = sum(len(str(m["content"]).split()) for m in request["messages"])
        completion = len(text.split())
        yield {"id": f"chatcmpl-{request['request_id']}", "object": "chat.completion",
               "created": int(time.time()), "model": request["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text,
                                        "reasoning": None}}],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}}


class StandinTeacherApp(Teacher):
    """`Teacher` with the stand-in deployed under the teacher's app name: the engine passes
    run exactly as with the real one (the same processor, the same replica clock)."""

    def __enter__(self):
        import cloudpickle
        import standin_teacher
        from ray import serve

        cloudpickle.register_pickle_by_value(standin_teacher)  # replicas cannot import it
        ensure_serve(self.config)
        replicas = self.config.teacher.engine.replicas
        deployment = serve.deployment(StandinTeacher, name=STANDIN_DEPLOYMENT,
                                      num_replicas=replicas, max_ongoing_requests=100_000,
                                      ray_actor_options={"num_cpus": 0})
        serve.run(deployment.bind(), name=TEACHER_APP, route_prefix=None)
        self.deployment = STANDIN_DEPLOYMENT
        self._deployed_at = time.monotonic()
        return self
