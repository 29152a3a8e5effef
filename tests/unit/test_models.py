import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kakugo.models import GRANITE_MICRO_CONFIG, ModelError, ModelSource, build_embedded

ATTENTION = {"attention", "full_attention"}  # transformers 5 writes the latter


def test_real_granite_micro_config_loads():
    config = AutoConfig.from_pretrained(GRANITE_MICRO_CONFIG)
    assert type(config).__name__ == "GraniteMoeHybridConfig"
    assert config.hidden_size // config.num_attention_heads == 64
    assert set(config.layer_types) <= ATTENTION and config.num_local_experts == 0
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert 3.3e9 < params < 3.5e9


@pytest.mark.parametrize(
    "spec, kind",
    [
        ("embedded:tiny-granite", "embedded"),
        ("s3://bucket/models/x/", "s3"),
        ("ibm-granite/granite-4.0-micro", "hub"),
        ("./some/dir", "local"),
    ],
)
def test_source_kinds(spec, kind):
    assert ModelSource.parse(spec).kind == kind


def test_bad_sources(tmp_path):
    with pytest.raises(ModelError, match="unknown embedded model 'nope'"):
        ModelSource.parse("embedded:nope")
    with pytest.raises(ModelError, match="not a local directory, an s3:// prefix, a hub id"):
        ModelSource.parse("not a model")
    with pytest.raises(ModelError, match="does not exist"):
        ModelSource.parse(str(tmp_path / "missing")).materialize()
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="has no tokenizer"):
        ModelSource.parse(str(tmp_path / "m")).materialize()


def test_embedded_student_is_granite_shaped_and_shares_the_teacher_tokenizer():
    student = build_embedded("tiny-granite")
    teacher = build_embedded("smollm2-135m-instruct")
    config = json.loads((student / "config.json").read_text())
    assert config["model_type"] == "granitemoehybrid"
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert set(config["layer_types"]) <= ATTENTION and config["num_local_experts"] == 0
    assert AutoTokenizer.from_pretrained(student).get_vocab() == \
        AutoTokenizer.from_pretrained(teacher).get_vocab()
    assert build_embedded("tiny-granite") == student  # cached, not rebuilt


def test_embedded_teacher_answers_like_an_instruct_model():
    path = build_embedded("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_model_from_s3_prefix_is_downloaded_once_and_loads(s3_bucket, tmp_path, monkeypatch):
    from kakugo.storage import Storage

    Storage(f"{s3_bucket}/models").upload_dir(build_embedded("tiny-granite"), "tiny")
    monkeypatch.setenv("KAKUGO_CACHE", str(tmp_path / "cache"))
    source = ModelSource.parse(f"{s3_bucket}/models/tiny/")
    local = source.materialize()
    assert local.startswith(str(tmp_path / "cache"))
    config = AutoConfig.from_pretrained(local)
    assert config.model_type == "granitemoehybrid"
    assert source.materialize() == local
