import json

import jinja2
import pytest

from kakugo.generate.reasoning import split_reasoning
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


HARMONY = ("<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|>"
           "<|start|>assistant<|channel|>final<|message|>It is 4.<|return|>")


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("<think>add 2 and 2</think>It is 4.", "think_tags", ("add 2 and 2", "It is 4.")),
        ("<think>a</think> x <think>b</think> y", "think_tags", ("a\n\nb", "x  y")),
        ("<think>still thinking", "think_tags", ("still thinking", "")),
        ("No tags here.", "think_tags", ("", "No tags here.")),
        (HARMONY, "gpt_oss", ("User asks 2+2. Easy.", "It is 4.")),
        (HARMONY.removesuffix("<|return|>"), "gpt_oss", ("User asks 2+2. Easy.", "It is 4.")),
        # cut off while still in the analysis channel: no answer
        ("<|channel|>analysis<|message|>Let me think", "gpt_oss", ("Let me think", "")),
        # a tool-call (commentary) message is neither reasoning nor answer
        (("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary "
         "to=functions.f <|constrain|>json<|message|>{}<|call|>"), "gpt_oss", ("a", "")),
        # schema-constrained JSON comes without channels: all answer
        ('{"items":["x"]}', "gpt_oss", ("", '{"items":["x"]}')),
        ("<think>kept</think>as text", "none", ("", "<think>kept</think>as text")),
    ],
)
def test_split_reasoning(text, mode, expected):
    assert split_reasoning(text, mode) == expected


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
    assert (out["method"], out["dtype"]) == ("chat", "ChatCompletionRequest")
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


def test_gpt_oss_teacher_keeps_channel_tokens_and_passes_reasoning_effort():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess, teacher_template_kwargs

    request = _postprocess_row(system="s", user="u", n=0, max_tokens=0, schema="")
    oss = load_config(None, ["teacher.reasoning=gpt_oss", "teacher.reasoning_effort=high"])
    sent = Preprocess(oss)(request)["request_kwargs"]
    assert sent["skip_special_tokens"] is False
    assert sent["chat_template_kwargs"] == {"reasoning_effort": "high"}
    assert teacher_template_kwargs(oss) == {"reasoning_effort": "high"}
    plain = Preprocess(load_config(None, []))(request)["request_kwargs"]
    assert plain["skip_special_tokens"] is True and plain["chat_template_kwargs"] is None
