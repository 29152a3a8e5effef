"""The trained student as a Hugging Face model directory under `{output}/{flores_code}/model/`:
consolidated safetensors weights, config, tokenizer with its chat template, a generation
config with the paper's inference settings (greedy, repetition penalty) and a model card.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kakugo.storage import Storage


def model_card(cfg: dict[str, Any]) -> str:
    """The card: huggingface_hub's ModelCardData as its header. `base_model` only where the
    student is a hub model (a local or embedded student has no id the Hub knows); the
    licence and the evaluation results are added when the model is pushed (kakugo push)."""
    from huggingface_hub import ModelCard, ModelCardData

    from kakugo.models import ModelSource

    lang, t = cfg["language"], cfg["training"]
    student = cfg["student_model"]
    data = ModelCardData(
        language=[lang["tag"]], library_name="transformers", pipeline_tag="text-generation",
        base_model=student if ModelSource.parse(student).kind == "hub" else None,
        datasets=[cfg["dataset_repo"]], tags=["kakugo", "distillation"],
        model_name=cfg["model_name"])
    precision = "pure bf16" if t["master_weights"] == "bf16" else t["precision"]
    return str(ModelCard(f"""---
{data.to_yaml()}
---

# {cfg['model_name']}

`{cfg['student_model']}` fully fine-tuned (DeepSpeed ZeRO-{t['zero_stage']}, {precision},
{t['epochs']} epoch(s), learning rate {t['learning_rate']}, {t['lr_scheduler']} schedule,
cutoff length {t['cutoff_len']}, packing {'on' if t['packing'] else 'off'}) on the Kakugo
{lang['name']} SFT data. Use greedy decoding with repetition penalty
{t['repetition_penalty']} (set in generation_config.json).

Training data: {cfg['train_rows']} packed rows of up to {t['cutoff_len']} tokens
({cfg['total_steps']} optimizer steps on {t['num_workers']} workers).
"""))


def export_model(module, state_dict: dict | None, cfg: dict[str, Any]) -> None:
    """Write the model directory (rank 0 only) and copy it to the run's storage."""
    from transformers import AutoTokenizer, GenerationConfig

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        module.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        AutoTokenizer.from_pretrained(cfg["student_path"]).save_pretrained(folder)
        generation = GenerationConfig.from_model_config(module.config)
        generation.do_sample = False
        generation.repetition_penalty = cfg["training"]["repetition_penalty"]
        generation.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(cfg))
        storage = Storage(cfg["output"])
        storage.delete(cfg["model_folder"])
        storage.upload_dir(folder, cfg["model_folder"])
