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


def _postprocess_row(**engine):
    from kakugo.generate.engine_pass import REQUEST_COLUMNS

    request = {c: "" for c in REQUEST_COLUMNS} | {"n": 2, "specific": False}
    return request | engine


def test_postprocess_parses_lists_and_infers_the_finish_reason():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Postprocess

    post = Postprocess(load_config(None, ["teacher.reasoning=think_tags",
                                          "teacher.sampling.list_max_tokens=50"]))
    ok = post(_postprocess_row(generated_text='<think>hm</think>{"items": ["a", " b "]}',
                               num_input_tokens=7, num_generated_tokens=12))
    assert (ok["items"], ok["reasoning"], ok["finish_reason"], ok["error"]) == (
        ["a", "b"], "hm", "stop", "")
    cut = post(_postprocess_row(generated_text='{"items": ["a", "b', num_generated_tokens=50))
    assert (cut["finish_reason"], cut["items"]) == ("length", [])
    failed = post(_postprocess_row(generated_text="", __inference_error__="engine died"))
    assert (failed["finish_reason"], failed["error"]) == ("error", "engine died")
    raw = post(_postprocess_row(generated_text='{"items": ["a\tb", "c\nd"]}',
                                num_generated_tokens=9))
    assert raw["items"] == ["a\tb", "c\nd"] and raw["error"] == ""
    bad = post(_postprocess_row(generated_text="not json", num_generated_tokens=3))
    assert bad["error"].startswith("unparsable list reply")


def test_gpt_oss_teacher_keeps_channel_tokens_and_passes_reasoning_effort():
    from kakugo.config import load_config
    from kakugo.generate.engine_pass import Preprocess, teacher_template_kwargs

    request = _postprocess_row(system="s", user="u", n=0)
    oss = load_config(None, ["teacher.reasoning=gpt_oss", "teacher.reasoning_effort=high"])
    assert Preprocess(oss)(request)["sampling_params"]["skip_special_tokens"] is False
    assert teacher_template_kwargs(oss) == {"reasoning_effort": "high"}
    plain = load_config(None, [])
    assert "skip_special_tokens" not in Preprocess(plain)(request)["sampling_params"]
    assert teacher_template_kwargs(plain) is None
