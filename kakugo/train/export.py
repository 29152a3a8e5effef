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
    lang, t = cfg["language"], cfg["training"]
    header = {"language": [lang["tag"]], "license": "apache-2.0", "library_name": "transformers",
              "pipeline_tag": "text-generation", "base_model": cfg["student_model"],
              "datasets": [cfg["dataset_repo"]], "tags": ["kakugo", "distillation"]}
    import yaml

    precision = "pure bf16" if t["master_weights"] == "bf16" else t["precision"]
    return f"""---
{yaml.safe_dump(header, sort_keys=False, allow_unicode=True).strip()}
---

# {cfg['model_name']}

`{cfg['student_model']}` fully fine-tuned (DeepSpeed ZeRO-{t['zero_stage']}, {precision},
{t['epochs']} epoch(s), learning rate {t['learning_rate']}, {t['lr_scheduler']} schedule,
cutoff length {t['cutoff_len']}, packing {'on' if t['packing'] else 'off'}) on the Kakugo
{lang['name']} SFT data. Use greedy decoding with repetition penalty
{t['repetition_penalty']} (set in generation_config.json).

Training data: {cfg['train_rows']} packed rows of up to {t['cutoff_len']} tokens
({cfg['total_steps']} optimizer steps on {t['num_workers']} workers).
"""


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
