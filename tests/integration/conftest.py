"""A session-wide local Ray cluster for tests that run real engines and workers."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # 2 physical cores: more logical CPUs so Ray Data's small stages and an engine fit at once.
    ctx = ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
                   runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield ctx
    finally:
        ray.shutdown()
