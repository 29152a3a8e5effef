from pathlib import Path

import pytest

from kakugo.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert {p.name for p in CONFIGS} >= {"paper.yaml", "tiny-cpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_paper_config_holds_the_paper_numbers():
    c = load_config(Path(__file__).resolve().parents[2] / "configs" / "paper.yaml")
    assert c.teacher.model == "openai/gpt-oss-120b"
    assert c.teacher.sampling.temperature == 1.0 and c.teacher.sampling.max_tokens == 2048
    assert c.student.model == "ibm-granite/granite-4.0-micro"
    t = c.generation.topics
    assert (len(t.general_seeds), len(t.language_seeds)) == (8, 8)
    assert (t.macro_topics_per_seed, t.topics_per_macro_topic) == (20, 10)
    assert (t.min_prompts_per_topic, t.max_prompts_per_topic) == (1, 3)
    s = c.generation.scenarios
    assert (s.broad_scenarios, s.detailed_per_broad, s.prompts_per_scenario) == (30, 30, 5)
    ctx = c.generation.contexts
    assert (ctx.max_texts, ctx.max_text_tokens, ctx.prompts_per_text) == (10000, 1000, 3)
    assert ctx.task_weights["qa"] * 2 == sum(ctx.task_weights.values())  # half are QA
    assert c.generation.revision_fraction == 0.5
    tr = c.translation
    assert (tr.source, tr.subset, tr.rows, tr.max_source_tokens) == (
        "BAAI/Infinity-Instruct", "7M_core", 15000, 2048)
    assert (tr.min_token_ratio, tr.max_token_ratio) == (0.75, 25.0)
    tn = c.training
    assert (tn.zero_stage, tn.precision, tn.learning_rate, tn.lr_scheduler) == (
        3, "bf16", 1e-5, "cosine")
    assert (tn.warmup_ratio, tn.epochs, tn.micro_batch_size, tn.gradient_accumulation_steps) == (
        0.05, 1, 1, 1)
    assert (tn.num_workers, tn.cutoff_len, tn.packing, tn.validation_fraction) == (
        8, 8000, True, 0.02)
    assert tn.repetition_penalty == 1.05
    assert c.evaluation.num_fewshot == 3


def test_dotted_override_changes_the_field():
    c = load_config(None, ["training.learning_rate=2e-5", "teacher.engine.replicas=3",
                           "languages=[gd, cy]"])
    assert c.training.learning_rate == 2e-5
    assert c.teacher.engine.replicas == 3
    assert c.languages == ["gd", "cy"]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.learnig_rate=1", "training.learnig_rate: unknown key"),
        ("training.learning_rate=abc", "training.learning_rate: bad value 'abc'"),
        ("generation.revision_fraction=1.5", "generation.revision_fraction: bad value 1.5"),
        ("generation.topics.macro_topics_per_seed=-1",
         "generation.topics.macro_topics_per_seed: bad value -1"),
        ("training.precision=fp8", "training.precision: bad value 'fp8'"),
        ("serving.port=70000", "serving.port: bad value 70000"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert expected in message
    if "unknown key" not in expected:
        assert any(w in message for w in ("should be", "expected", "must be"))


def test_precision_choices_are_listed():
    with pytest.raises(ConfigError, match="'bf16' or 'fp32'"):
        load_config(None, ["training.precision=fp8"])


def test_cross_field_rule_is_reported():
    with pytest.raises(ConfigError, match="min_prompts_per_topic .* must be <="):
        load_config(None, ["generation.topics.min_prompts_per_topic=4"])


def test_every_accelerator_type_needs_a_price():
    with pytest.raises(ConfigError, match="cluster.training_accelerator_type is 'A100', which "
                       "has no price in cluster.price_per_hour"):
        load_config(None, ["cluster.training_accelerator_type=A100"])
    with pytest.raises(ConfigError, match="prices must be >= 0"):
        load_config(None, ["cluster.price_per_hour.H100=-1"])
    priced = load_config(None, ["cluster.training_accelerator_type=A100",
                                "cluster.price_per_hour.A100=1.8"])
    assert priced.cluster.price_per_hour["A100"] == 1.8
    assert priced.cluster.price_per_hour["H100"] == 2.5  # given prices add to the defaults


def test_gpu_only_attention_kernels_are_refused_on_cpu():
    with pytest.raises(ConfigError, match="'torch_varlen' runs on GPUs only"):
        load_config(None, ["training.use_gpu=false", "training.attention=torch_varlen"])
    assert load_config(None, ["training.attention=torch_varlen"]).training.use_gpu


def test_malformed_yaml_and_wrong_top_level(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["training.learning_rate"])
    with pytest.raises(ConfigError, match="seed: bad value"):
        load_config(None, ["seed.x=1"])


def test_digest_is_stable_and_sensitive():
    a, b = load_config(None), load_config(None)
    assert a.digest() == b.digest()
    c = load_config(None, ["seed=1"])
    assert c.digest() != a.digest()
    assert c.digest("training") == a.digest("training")


def test_every_key_is_documented_and_the_reference_is_current():
    from kakugo import config_reference

    assert config_reference.undocumented() == []
    assert config_reference.DOC.read_text(encoding="utf-8") == config_reference.render(), (
        "docs/configuration.md is stale: run python -m kakugo.config_reference")
    keys = {ln.split("`")[1] for ln in config_reference.render().splitlines()
            if ln.startswith("| `")}
    assert {"teacher.engine.replicas", "serving.students.min_replicas",
            "training.cutoff_len", "cluster.price_per_hour"} <= keys
