"""The dataset card (README.md with the Hub's YAML header) and the LLaMA-Factory entry of a
language's SFT set."""

from __future__ import annotations

from typing import Any

from kakugo.config import FINEWEB2_HUB_ID, RunConfig
from kakugo.languages import Language
from kakugo.models import HUB_ID_RE


def dataset_name(lang: Language) -> str:
    return f"kakugo-{lang.tag}"


def llamafactory_info(lang: Language) -> dict[str, Any]:
    """A LLaMA-Factory `dataset_info.json` entry for `data/` (openai-style messages)."""
    return {dataset_name(lang).replace("-", "_"): {
        "file_name": "data",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"},
    }}


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M"


def source_datasets(config: RunConfig) -> list[str]:
    """The hub datasets the rows come from: the context texts and the English
    instructions, where they are hub datasets (local and embedded sources are not)."""
    out = []
    if config.generation.contexts.source == "fineweb2":
        out.append(FINEWEB2_HUB_ID)
    source = config.translation.source
    if HUB_ID_RE.match(source) and not source.startswith("embedded:") and \
            not source.endswith((".jsonl", ".json", ".parquet")):
        out.append(source)
    return out


def dataset_card(lang: Language, config: RunConfig, stats: dict[str, Any]) -> str:
    """The card: huggingface_hub's DatasetCardData as its YAML header (what the Hub
    indexes), our counts under `kakugo`, and a body with the tables."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        language=[lang.tag],
        license=config.dataset.license,
        pretty_name=f"Kakugo {lang.name} SFT data",
        size_categories=[_size_category(stats["rows"])],
        task_categories=["text-generation"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        multilinguality=["monolingual"],
        source_datasets=source_datasets(config),
        tags=["kakugo", "synthetic", "distillation"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        kakugo={
            "flores_code": lang.flores_code,
            "iso639_3": lang.iso639_3,
            "teacher": config.teacher.name or config.teacher.model,
            "rows": stats["rows"],
            "categories": stats["categories"],
            "candidates": stats["candidates"],
            "rejects": stats["rejects"],
            "language_id": stats["language_id"],
            "generation_tokens": stats["generation_tokens"],
            "reasoning_tokens": stats.get("reasoning_tokens", 0),
            "engine_seconds": stats["engine_seconds"],
            "accelerator": stats["accelerator"],
            "filters": stats["filters"],
            "decontaminated_against": stats["decontaminated_against"],
            "rows_with_trace": stats["rows_with_trace"],
            "token_budget": stats["token_budget"],
            "budget_tokens_used": stats["budget_tokens_used"],
        },
    )
    categories = "\n".join(f"| {k} | {v} |" for k, v in stats["categories"].items())
    rejects = "\n".join(f"| {k} | {v} |" for k, v in stats["rejects"].items()) or "| none | 0 |"
    checks = "\n".join(f"| {name} | {f['action']} | {f['dropped']} | {f['annotated']} |"
                       for name, f in stats["filters"].items())
    budget = ("" if stats["token_budget"] is None else
              f"\nToken-limited variant: a budget of {stats['token_budget']} training tokens "
              f"({stats['budget_tokens_used']} used), filled with answers first; "
              f"{stats['rows_with_trace']} rows keep their reasoning trace.\n")
    return str(DatasetCard(f"""---
{data.to_yaml()}
---

# Kakugo {lang.name} SFT data

Synthetic instruction data in {lang.name} (`{lang.flores_code}`), written by the teacher
`{config.teacher.name or config.teacher.model}` with the Kakugo method: prompts from
topics, scenarios and context texts (half of them revised), answered with reasoning
traces, plus a translated English instruction set. {stats['rows']} rows were kept out of
{stats['candidates']} candidates.

| category | rows |
|---|---|
{categories}

| rejected by | rows |
|---|---|
{rejects}

| check | action | rows dropped | rows flagged and kept |
|---|---|---|---|
{checks}
{budget}
Each row has a `messages` list in OpenAI chat format. Generated rows ask the model to
think inside `<think>` tags first; translated rows have a short system prompt and no
reasoning. `dataset_info.json` registers `data/` for LLaMA-Factory.
"""))
