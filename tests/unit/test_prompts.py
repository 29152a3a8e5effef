import json

import jinja2
import pytest

from kakugo.generate.reasoning import split_think_tags
from kakugo.prompts import TEMPLATES, list_schema, render

VARIABLES = {
    "language": "Scottish Gaelic", "n": 3, "seed": "health", "specific": True,
    "parent": "nutrition", "item": "school meals", "context": "Tha i fuar an-diugh.",
    "task_instruction": "summarize it", "prompt": "Ciamar a tha thu?",
    "revision_instruction": "sounds more natural",
    "conversation": '{"turns": [{"role": "user", "content": "Hi"}]}',
}


@pytest.mark.parametrize("name", sorted(p.stem for p in TEMPLATES.glob("*.txt")))
def test_every_template_renders_and_names_the_language(name):
    text = render(name, **VARIABLES)
    assert "Scottish Gaelic" in text
    assert "{{" not in text and "{%" not in text


def test_list_templates_ask_for_the_exact_count():
    for name in ("macro_topics", "topics", "topic_prompts", "broad_scenarios",
                 "detailed_scenarios", "scenario_prompts", "context_prompts"):
        assert "exactly 3" in render(name, **VARIABLES)


def test_missing_variable_is_an_error():
    with pytest.raises(jinja2.UndefinedError):
        render("topics", language="Welsh", n=2)


def test_list_schema_is_count_exact():
    schema = list_schema(4, 300)
    items = schema["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (4, 4)
    assert items["items"]["maxLength"] == 300
    assert schema["additionalProperties"] is False
    json.dumps(schema)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>add 2 and 2</think>It is 4.", ("add 2 and 2", "It is 4.")),
        ("<think>a</think> x <think>b</think> y", ("a\n\nb", "x  y")),
        ("<think>still thinking", ("still thinking", "")),
        ("No tags here.", ("", "No tags here.")),
    ],
)
def test_split_think_tags(text, expected):
    assert split_think_tags(text) == expected


def _postprocess_row(**fields):
    from kakugo.generate.engine_pass import REQUEST_COLUMNS

    request = {c: "" for c in REQUEST_COLUMNS} | {"n": 2, "specific": False}
    return request | fields


def _reply(text: str, finish: str = "stop", prompt: int = 7, completion: int = 12) -> dict:
    """A chat completion response as the Serve deployment stage hands it on."""
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def test_postprocess_parses_lists_and_keeps_the_finish_reason():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Postprocess, output_row

    post = Postprocess(load_config(None, ["teacher.reasoning=think_tags"]))
    ok = post(_postprocess_row(**_reply('<think>hm</think>{"items": ["a", " b "]}'),
                               kakugo_row_id="row-1", id="chatcmpl-0"))
    assert ok["id"] == "row-1"  # the response's id does not replace the row's
    assert (ok["items"], ok["reasoning"], ok["finish_reason"], ok["error"]) == (
        ["a", "b"], "hm", "stop", "")
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (7, 12)
    cut = post(_postprocess_row(**_reply('{"items": ["a", "b', finish="length")))
    assert (cut["finish_reason"], cut["items"]) == ("length", [])
    # a request that got no answer skips Postprocess and becomes a failed row (sent again)
    failed = output_row(_postprocess_row(id="r9", __inference_error__="TimeoutError: 600 s"))
    assert (failed["id"], failed["finish_reason"]) == ("r9", "failed")
    assert failed["error"] == "teacher request failed: TimeoutError: 600 s"
    assert set(failed) == set(ok) and failed["items"] == []
    assert "__inference_error__" not in output_row({**ok, "__inference_error__": ""})
    refused = post(_postprocess_row(error={"message": "prompt too long", "code": 400}))
    assert (refused["finish_reason"], refused["error"]) == ("error", "prompt too long")
    raw = post(_postprocess_row(**_reply('{"items": ["a\tb", "c\nd"]}')))
    assert raw["items"] == ["a\tb", "c\nd"] and raw["error"] == ""
    bad = post(_postprocess_row(**_reply("not json")))
    assert bad["error"].startswith("unparsable list reply")


def test_preprocess_builds_one_chat_request_with_the_list_schema():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess

    config = load_config("configs/tiny-cpu.yaml", [])
    row = _postprocess_row(system="s", user="u", n=3, max_tokens=0, schema="")
    out = Preprocess(config)(row)
    assert out["method"] == "chat_row"  # kakugo.serve.llm_server
    request = out["request_kwargs"]
    assert request["model"] == "smollm2-135m" and request["max_tokens"] == 384
    assert request["messages"] == [{"role": "system", "content": "s"},
                                   {"role": "user", "content": "u"}]
    schema = json.loads(request["structured_outputs"]["json"])
    assert schema["properties"]["items"]["minItems"] == 3
    free = Preprocess(config)(_postprocess_row(system="s", user="u", n=0, max_tokens=0,
                                               schema=""))
    assert free["request_kwargs"]["structured_outputs"] is None
    assert free["request_kwargs"]["max_tokens"] == 96


def test_gpt_oss_teacher_passes_reasoning_effort_and_budgets_its_trace():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess, teacher_template_kwargs

    oss = load_config(None, ["teacher.reasoning=gpt_oss", "teacher.reasoning_effort=high",
                             "teacher.sampling.reasoning_max_tokens=1000"])
    free = _postprocess_row(system="s", user="u", n=0, max_tokens=0, schema="")
    sent = Preprocess(oss)(free)["request_kwargs"]
    assert sent["chat_template_kwargs"] == {"reasoning_effort": "high"}
    assert teacher_template_kwargs(oss) == {"reasoning_effort": "high"}
    # a response's budget covers trace and answer (the paper's 2,048 new tokens); list
    # calls and translations get the trace's budget on top of their answer's
    assert sent["max_tokens"] == oss.teacher.sampling.max_tokens
    listing = Preprocess(oss)(_postprocess_row(system="s", user="u", n=3, max_tokens=0,
                                               schema=""))["request_kwargs"]
    assert listing["max_tokens"] == oss.teacher.sampling.list_max_tokens + 1000
    translation = Preprocess(oss)(_postprocess_row(system="s", user="u", n=0, max_tokens=300,
                                                   schema='{"type": "object"}'))
    assert translation["request_kwargs"]["max_tokens"] == 1300
    plain = load_config(None, [])
    assert Preprocess(plain)(free)["request_kwargs"]["chat_template_kwargs"] is None
    assert Preprocess(plain)(translation | {"n": 0, "max_tokens": 300, "schema": "{}"})[
        "request_kwargs"]["max_tokens"] == 300


def _vllm_reply(reasoning: str | None, content: str | None, *, reasoning_tokens: int,
                completion_tokens: int, finish: str = "stop") -> dict:
    """A chat reply as Ray Data's Serve stage hands it on (`model_dump()`)."""
    return _vllm_response(reasoning, content, reasoning_tokens=reasoning_tokens,
                          completion_tokens=completion_tokens, finish=finish).model_dump()


def _vllm_response(reasoning: str | None, content: str | None, *, reasoning_tokens: int,
                   completion_tokens: int, finish: str = "stop"):
    """A chat reply as Ray Serve LLM's deployment returns it (vLLM's response model)."""
    from ray.serve.llm.openai_api_models import ChatCompletionResponse
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionResponseChoice,
        ChatMessage,
    )
    from vllm.entrypoints.serve.engine.protocol import CompletionTokenUsageInfo, UsageInfo

    response = ChatCompletionResponse(
        model="gpt-oss-120b",
        choices=[ChatCompletionResponseChoice(
            index=0, finish_reason=finish,
            message=ChatMessage(role="assistant", reasoning=reasoning, content=content))],
        usage=UsageInfo(prompt_tokens=40, completion_tokens=completion_tokens,
                        total_tokens=40 + completion_tokens,
                        completion_tokens_details=CompletionTokenUsageInfo(
                            reasoning_tokens=reasoning_tokens)))
    return response


def test_postprocess_takes_the_trace_from_vllms_reasoning_field():
    """gpt-oss-shaped replies as vLLM's chat endpoint gives them (its harmony parser has
    put the analysis channel in `reasoning`, the final channel in `content`)."""
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Postprocess

    post = Postprocess(load_config(None, ["teacher.reasoning=gpt_oss"]))
    answer = post(_postprocess_row(n=0, **_vllm_reply(
        "The user greets in Gaelic. Answer briefly.", "Halò! Ciamar a tha thu?",
        reasoning_tokens=9, completion_tokens=17)))
    assert (answer["reasoning"], answer["text"]) == (
        "The user greets in Gaelic. Answer briefly.", "Halò! Ciamar a tha thu?")
    assert (answer["completion_tokens"], answer["reasoning_tokens"]) == (17, 9)
    # a list call: the schema-constrained JSON is the content, the trace apart
    listing = post(_postprocess_row(n=2, **_vllm_reply(
        "Two topics about food.", '{"items": ["biadh", "cofaidh"]}', reasoning_tokens=5,
        completion_tokens=20)))
    assert listing["items"] == ["biadh", "cofaidh"] and listing["error"] == ""
    assert listing["reasoning"] == "Two topics about food."
    # cut off while reasoning: no answer yet, and the row is unfinished
    cut = post(_postprocess_row(n=0, **_vllm_reply(
        "Let me think about", None, reasoning_tokens=2048, completion_tokens=2048,
        finish="length")))
    assert (cut["text"], cut["finish_reason"], cut["reasoning_tokens"]) == ("", "length", 2048)
    # a teacher served without a parser: the same reply's trace is not looked for
    plain = Postprocess(load_config(None, ["teacher.reasoning=none"]))(
        _postprocess_row(n=0, **_vllm_reply("hidden", "shown", reasoning_tokens=0,
                                            completion_tokens=3)))
    assert (plain["reasoning"], plain["text"], plain["reasoning_tokens"]) == ("", "shown", 0)


def test_think_tags_teacher_counts_its_trace_tokens_with_its_tokenizer():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Postprocess

    post = Postprocess(load_config("configs/tiny-cpu.yaml", []))  # think_tags, SmolLM2
    out = post(_postprocess_row(n=0, **_reply("<think>one two three</think>Tha.")))
    assert (out["reasoning"], out["text"]) == ("one two three", "Tha.")
    assert out["reasoning_tokens"] == 3


FEEDING_ACTOR = """
import json, sys, types
import cloudpickle
from ray.llm._internal.batch.stages.serve_deployment_stage import ServeDeploymentStageUDF

processor, preprocess, row = cloudpickle.loads(open(sys.argv[1], "rb").read())
out = preprocess(row)
out[ServeDeploymentStageUDF.IDX_IN_BATCH_COLUMN] = 0
# what ServeDeploymentStageUDF does with a row before the handle call (its own code)
stage = types.SimpleNamespace(_dtype_mapping=processor.dtype_mapping, request_id=0,
                              IDX_IN_BATCH_COLUMN=ServeDeploymentStageUDF.IDX_IN_BATCH_COLUMN)
request, dtype, method = ServeDeploymentStageUDF._prepare_request(stage, out)
sent = cloudpickle.dumps(dtype(**request) if dtype else request)  # as the handle sends it
print(json.dumps({"method": method, "vllm": "vllm" in sys.modules}))
"""


def test_the_actors_feeding_the_teacher_never_import_vllm(tmp_path):
    """Each Ray Data actor of each engine pass unpickles the processor's settings, runs
    Preprocess and sends the request; importing vLLM there (its request type) cost ~17 s of
    CPU per actor, most of a small pass's time on 2 cores."""
    import subprocess
    import sys

    import cloudpickle

    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess
    from kakugo.serving import Teacher

    config = load_config("configs/tiny-cpu.yaml", [])
    teacher = Teacher(config)
    teacher.deployment = "TeacherServer:smollm2-135m"  # as if deployed
    row = _postprocess_row(system="s", user="u", n=3, max_tokens=0, schema="", id="r1")
    (tmp_path / "payload").write_bytes(cloudpickle.dumps(
        (teacher.processor_config(), Preprocess(config), row)))
    proc = subprocess.run([sys.executable, "-c", FEEDING_ACTOR, str(tmp_path / "payload")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"method": "chat_row", "vllm": False}


def test_the_teacher_server_builds_vllms_request_and_returns_its_reply_as_a_dict():
    """`TeacherServer.chat_row` with what the stage sends for a list call: `chat` gets
    vLLM's own request type with our fields, and the reply comes back as the dict Ray
    Data's stage made of vLLM's response model; a field vLLM refuses is a pydantic
    ValidationError (a row error for the stage, as it was when the actor built it)."""
    import asyncio

    import pydantic
    import pytest
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Postprocess, Preprocess
    from kakugo.serve.llm_server import TeacherServer

    config = load_config("configs/tiny-cpu.yaml", ["teacher.reasoning=none"])
    row = _postprocess_row(system="s", user="u", n=2, max_tokens=0, schema="", id="r1")
    fields = {"request_id": "7", "idx_in_batch": 0,
              **Preprocess(config)(row)["request_kwargs"]}
    response = _vllm_response(None, '{"items": ["biadh", "cofaidh"]}', reasoning_tokens=0,
                              completion_tokens=11)
    seen = []

    async def chat(request, raw_request_info=None):
        seen.append(request)

        async def replies():
            yield response
        return replies()

    from ray.serve.llm import LLMConfig

    from kakugo.serving import Teacher

    # the teacher's deployment is built with it (Ray's builder takes LLMConfig.server_cls)
    assert LLMConfig(**Teacher(config).llm_config()).server_cls is TeacherServer
    server = TeacherServer.__new__(TeacherServer)  # the engine is not needed for this
    server.chat = chat

    async def collect(sent):
        return [reply async for reply in server.chat_row(sent)]

    replies = asyncio.run(collect(fields))
    (request,) = seen
    assert isinstance(request, ChatCompletionRequest)
    assert (request.model, request.max_tokens, request.request_id) == ("smollm2-135m", 384, "7")
    assert request.structured_outputs.json == fields["structured_outputs"]["json"]
    assert replies == [response.model_dump()]
    out = Postprocess(config)({**row, **replies[0], "kakugo_row_id": "r1"})
    assert (out["items"], out["error"], out["id"]) == (["biadh", "cofaidh"], "", "r1")
    with pytest.raises(pydantic.ValidationError, match="max_tokens"):
        asyncio.run(collect({**fields, "max_tokens": "many"}))
