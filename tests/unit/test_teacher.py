import pytest

from kakugo.config import EngineConfig
from kakugo.teacher import engine_env, engine_kwargs, placement_bundles


def test_gpu_engine_takes_one_gpu_bundle_per_tensor_parallel_rank():
    engine = EngineConfig(accelerator="gpu", tensor_parallel_size=2, replicas=3,
                          gpu_memory_utilization=0.85)
    assert placement_bundles(engine) == [{"GPU": 1, "CPU": 1}, {"GPU": 1, "CPU": 1}]
    kwargs = engine_kwargs(engine, seed=7)
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"], kwargs["seed"]) \
        == (2, 0.85, 7)
    assert engine_env(engine) == {}


def test_cpu_engine_uses_cpu_bundles_and_light_side_stages():
    engine = EngineConfig(accelerator="cpu", cpus_per_engine=2, cpu_kv_cache_gib=3,
                          extra_engine_kwargs={"max_num_batched_tokens": 1024})
    assert placement_bundles(engine) == [{"CPU": 2}]
    kwargs = engine_kwargs(engine)
    assert kwargs["distributed_executor_backend"] == "uni"
    assert "gpu_memory_utilization" not in kwargs and "seed" not in kwargs
    assert kwargs["max_num_batched_tokens"] == 1024
    assert engine_env(engine) == {"VLLM_CPU_KVCACHE_SPACE": "3", "KAKUGO_VLLM_SPIN_WAIT": "0"}


def test_teacher_engines_get_their_reasoning_parser_and_compact_json_in_vllms_types():
    """The engine side of a reasoning teacher, checked against vLLM's own config classes:
    the parser name is one vLLM registers, and compact JSON is an engine setting (vLLM's
    xgrammar backend reads it from the engine config, never from a request)."""
    from vllm.config.structured_outputs import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.reasoning import ReasoningParserManager

    from kakugo.config import load_config
    from kakugo.models import build_embedded
    from kakugo.teacher import REASONING_PARSERS, teacher_engine_kwargs

    for mode, parser in REASONING_PARSERS.items():
        extra = teacher_engine_kwargs(load_config(None, [f"teacher.reasoning={mode}"]).teacher)
        assert extra["reasoning_parser"] == parser
        assert ReasoningParserManager.get_reasoning_parser(parser)  # registered by vLLM
    for mode in ("none", "think_tags"):  # no parser: the text is all answer, or split by us
        extra = teacher_engine_kwargs(load_config(None, [f"teacher.reasoning={mode}"]).teacher)
        assert "reasoning_parser" not in extra
    compact = StructuredOutputsConfig(**extra["structured_outputs_config"])
    assert compact.disable_any_whitespace and compact.backend == "xgrammar"
    kwargs = engine_kwargs(EngineConfig(accelerator="cpu"), extra=extra)
    model = str(build_embedded("smollm2-135m-instruct"))
    args = AsyncEngineArgs(model=model, **{**kwargs, "structured_outputs_config": compact})
    assert args.structured_outputs_config.disable_any_whitespace


def test_the_per_step_token_budget_reaches_the_engine_and_holds_a_full_batch():
    from kakugo.config import ConfigError, load_config

    assert "max_num_batched_tokens" not in engine_kwargs(EngineConfig())  # vLLM's default
    engine = EngineConfig(max_num_seqs=32, max_num_batched_tokens=4096)
    assert engine_kwargs(engine)["max_num_batched_tokens"] == 4096
    with pytest.raises(ConfigError, match=r"max_num_seqs \(64\) must be <= "
                       r"max_num_batched_tokens \(32\)"):
        load_config(None, ["teacher.engine.max_num_seqs=64",
                           "teacher.engine.max_num_batched_tokens=32"])
