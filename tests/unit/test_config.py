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


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# The sections whose values the paper gives (checked below) and the ones it does not:
# where and how a run goes, not what it computes. A new section must join one of them.
PAPER_SECTIONS = {"teacher", "student", "generation", "translation", "filters", "dataset",
                  "training", "evaluation", "publish", "cluster"}
NOT_THE_PAPERS = {"name", "languages", "output", "seed", "serving", "progress_every_s"}


def test_every_section_is_either_the_papers_or_not():
    assert PAPER_SECTIONS | NOT_THE_PAPERS == set(RunConfig.model_fields)
    assert not PAPER_SECTIONS & NOT_THE_PAPERS


def test_paper_config_holds_the_paper_numbers():
    c = load_config(CONFIG_DIR / "paper.yaml")
    # teacher and student
    assert c.teacher.model == "openai/gpt-oss-120b" and c.teacher.reasoning == "gpt_oss"
    assert c.teacher.sampling.temperature == 1.0 and c.teacher.sampling.max_tokens == 2048
    assert c.teacher.sampling.top_p == 1.0
    assert c.student.model == "ibm-granite/granite-4.0-micro"
    # generation
    t = c.generation.topics
    assert (len(t.general_seeds), len(t.language_seeds)) == (8, 8)
    assert (t.macro_topics_per_seed, t.topics_per_macro_topic) == (20, 10)
    assert (t.min_prompts_per_topic, t.max_prompts_per_topic) == (1, 3)
    s = c.generation.scenarios
    assert (s.broad_scenarios, s.detailed_per_broad, s.prompts_per_scenario) == (30, 30, 5)
    ctx = c.generation.contexts
    assert ctx.source == "fineweb2"
    assert (ctx.max_texts, ctx.max_text_tokens, ctx.prompts_per_text) == (10000, 1000, 3)
    assert ctx.task_weights["qa"] * 2 == sum(ctx.task_weights.values())  # half are QA
    assert c.generation.revision_fraction == 0.5
    # translation
    tr = c.translation
    assert (tr.source, tr.subset, tr.rows, tr.max_source_tokens) == (
        "BAAI/Infinity-Instruct", "7M_core", 15000, 2048)
    assert (tr.min_token_ratio, tr.max_token_ratio) == (0.75, 25.0)
    # filters: the paper's drop, ours annotate only
    f = c.filters
    assert f.basic == "drop"
    assert (f.empty, f.dedup, f.language_id, f.decontamination) == ("annotate",) * 4
    # dataset: the full variant; generated rows think in tags, translated ones are concise
    assert c.dataset.token_budget is None
    assert "<think>" in c.dataset.think_system_prompt
    # training: LLaMA-Factory's recipe on 8 RTX 3090s
    tn = c.training
    assert (tn.zero_stage, tn.precision, tn.learning_rate, tn.lr_scheduler) == (
        3, "bf16", 1e-5, "cosine")
    assert (tn.warmup_ratio, tn.epochs, tn.micro_batch_size, tn.gradient_accumulation_steps) == (
        0.05, 1, 1, 1)
    assert (tn.num_workers, tn.cutoff_len, tn.packing, tn.validation_fraction) == (
        8, 8000, True, 0.02)
    assert tn.repetition_penalty == 1.05
    # the cluster: the teacher asks for H100s; training on any GPU (no cloud rents 3090s)
    assert (c.cluster.teacher_accelerator_type, c.cluster.training_accelerator_type) == (
        "H100", None)
    # evaluation: the four benchmarks, both FLORES directions, 3-shot
    assert c.evaluation.tasks == ["belebele", "sib200", "global_mmlu", "flores_en_xx",
                                  "flores_xx_en"]
    assert c.evaluation.num_fewshot == 3
    # the released names
    assert (c.publish.dataset_repo, c.publish.model_repo) == ("kakugo-{iso639_3}",
                                                              "kakugo-3B-{iso639_3}")


def test_the_improved_recipe_is_the_paper_with_our_filters_dropping():
    paper = load_config(CONFIG_DIR / "paper.yaml").model_dump()
    improved = load_config(CONFIG_DIR / "improved.yaml").model_dump()
    assert {k for k in paper if paper[k] != improved[k]} == {"name", "filters"}
    changed = {k for k in paper["filters"] if paper["filters"][k] != improved["filters"][k]}
    assert changed == {"empty", "dedup", "language_id", "decontamination"}
    assert {improved["filters"][k] for k in changed} == {"drop"}


def test_a_config_extends_another_and_refuses_loops(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 7\ntraining: {learning_rate: 2.0e-5, epochs: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntraining: {epochs: 3}\n")
    c = load_config(tmp_path / "child.yaml")
    assert (c.seed, c.training.learning_rate, c.training.epochs) == (7, 2e-5, 3)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back to itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml does not exist \(extended by"):
        load_config(tmp_path / "orphan.yaml")


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


def test_an_accelerator_type_must_be_one_ray_knows():
    with pytest.raises(ConfigError, match="cluster.training_accelerator_type is 'RTX3090', "
                       "not an accelerator type Ray knows; use one of V100, .*H100"):
        load_config(None, ["cluster.training_accelerator_type=RTX3090"])
    assert load_config(None, ["cluster.teacher_accelerator_type=H200"]) \
        .cluster.teacher_accelerator_type == "H200"


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
