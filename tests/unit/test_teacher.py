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
    assert engine_env(engine) == {"VLLM_CPU_KVCACHE_SPACE": "3"}
