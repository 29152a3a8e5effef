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
    schema = list_schema(4)
    items = schema["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (4, 4)
    assert schema["additionalProperties"] is False
    json.dumps(schema)


@pytest.mark.parametrize(
    "text, mode, reasoning, expected",
    [
        ("<think>add 2 and 2</think>It is 4.", "think_tags", None, ("add 2 and 2", "It is 4.")),
        ("<think>a</think> x <think>b</think> y", "think_tags", None, ("a\n\nb", "x  y")),
        ("<think>still thinking", "think_tags", None, ("still thinking", "")),
        ("No tags here.", "think_tags", None, ("", "No tags here.")),
        ("Final answer.", "gpt_oss", "analysis here", ("analysis here", "Final answer.")),
        ("Final answer.", "gpt_oss", None, ("", "Final answer.")),
        ("<think>kept</think>as text", "none", None, ("", "<think>kept</think>as text")),
    ],
)
def test_split_reasoning(text, mode, reasoning, expected):
    assert split_reasoning(text, mode, reasoning) == expected
