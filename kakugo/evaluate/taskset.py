"""The lm-eval tasks of a run: the package's task YAMLs rendered per language.

Each YAML in `kakugo/evaluate/tasks/` `include:`s lm-eval's own registry template (SIB-200,
Belebele, Global-MMLU) so prompts, choices and targets are the registry's; rendering only
fills in the language and appends the data source: the local files under the evaluation
data folder when they are there, else the hub dataset the registry uses. FLORES has no
registry task for every language: ours is generation + corpus chrF++, on sentence pairs
written next to the YAMLs.

Local layout (under `evaluation.data_dir` or $KAKUGO_DATA_DIR):
  sib200/{flores_code}/{dev,test}.tsv           (index_id, category, text)
  flores200/devtest/{flores_code}.devtest       (line-aligned with eng_Latn.devtest)
  belebele/{flores_code}.jsonl                  (Belebele's schema)
  global_mmlu/{key}/{dev,test}.jsonl            (Global-MMLU's schema; key as in lm-eval)
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import langcodes
import yaml
from langcodes.data_dicts import MACROLANGUAGES

from kakugo.config import RunConfig
from kakugo.errors import EvalDataError
from kakugo.languages import EVAL_HUB_DATASETS, Language, eval_data_dir

TEMPLATES = Path(__file__).resolve().parent / "tasks"
LOGLIKELIHOOD = ("sib200", "belebele", "global_mmlu")
GENERATION = ("flores_en_xx", "flores_xx_en")
HUB = {**EVAL_HUB_DATASETS, "flores": EVAL_HUB_DATASETS["flores200"]}


@dataclass(frozen=True)
class EvalTask:
    kind: str          # the config's task name, e.g. "sib200"
    language: str      # FLORES code
    name: str          # the lm-eval task name
    generation: bool


def registry_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def hub_online() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0")


@functools.cache
def _global_mmlu_folders() -> dict[str, str]:
    """ISO 639-3 -> lm-eval's Global-MMLU folder name (ISO 639-1 mostly)."""
    return {langcodes.Language.get(f.name).to_alpha3(): f.name
            for f in sorted((registry_dir() / "global_mmlu" / "full").iterdir())
            if f.is_dir() and not f.name.startswith("_")}


def global_mmlu_key(lang: Language) -> str | None:
    """lm-eval's Global-MMLU folder for the language (or its macrolanguage), if any."""
    macro = MACROLANGUAGES.get(langcodes.Language.get(lang.iso639_3).language or "")
    folders = _global_mmlu_folders()
    for code in (lang.iso639_3, langcodes.Language.get(macro).to_alpha3() if macro else None):
        if code in folders:
            return folders[code]
    return None


def _flores_pairs(lang: Language, data_dir: Path | None,
                  english_first: bool) -> list[dict[str, str]] | None:
    def local(code: str) -> list[str] | None:
        path = data_dir / "flores200" / "devtest" / f"{code}.devtest" if data_dir else None
        return path.read_text(encoding="utf-8").splitlines() if path and path.is_file() else None

    def hub(code: str) -> list[str]:
        from datasets import load_dataset

        return load_dataset(HUB["flores"], code, split="devtest")["text"]

    eng, other = local("eng_Latn"), local(lang.flores_code)
    if eng is None or other is None:
        if not hub_online():
            return None
        eng, other = hub("eng_Latn"), hub(lang.flores_code)
    if len(eng) != len(other):
        raise EvalDataError(f"FLORES devtest of {lang.flores_code} has {len(other)} lines, "
                            f"English has {len(eng)}: they must be line-aligned")
    src, tgt = (eng, other) if english_first else (other, eng)
    return [{"source": s, "target": t} for s, t in zip(src, tgt, strict=True)]


def data_source(kind: str, lang: Language, data_dir: Path | None,
                folder: Path) -> dict[str, Any] | str:
    """The lm-eval dataset keys for one task, or why there is none (a string)."""
    offline = "no local data and the hub is offline"
    code = lang.flores_code
    if kind == "sib200":
        tsv = data_dir / "sib200" / code if data_dir else None
        if tsv and (tsv / "test.tsv").is_file():
            return {"dataset_path": "csv", "dataset_name": None, "dataset_kwargs": {
                "data_files": {"validation": str(tsv / "dev.tsv"), "test": str(tsv / "test.tsv")},
                "delimiter": "\t"}}
        if data_dir and (data_dir / "sib200").is_dir():
            return "not in SIB-200"
        return {"dataset_path": HUB[kind], "dataset_name": code} if hub_online() else offline
    if kind == "belebele":
        path = data_dir / "belebele" / f"{code}.jsonl" if data_dir else None
        if path and path.is_file():
            return {"dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {"test": str(path)}}}
        if not (registry_dir() / "belebele" / f"belebele_{code}.yaml").is_file():
            return "not in Belebele"
        return {"dataset_path": HUB[kind], "dataset_name": code} if hub_online() else offline
    if kind == "global_mmlu":
        key = global_mmlu_key(lang)
        if key is None:
            return "not in Global-MMLU"
        base = data_dir / "global_mmlu" / key if data_dir else None
        if base and (base / "test.jsonl").is_file():
            dev = base / "dev.jsonl"
            return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {
                "data_files": {"test": str(base / "test.jsonl"),
                               "dev": str(dev if dev.is_file() else base / "test.jsonl")}}}
        return {"dataset_path": HUB[kind], "dataset_name": key} if hub_online() else offline
    if kind in GENERATION:
        pairs = _flores_pairs(lang, data_dir, english_first=kind == "flores_en_xx")
        if pairs is None:
            return "not in FLORES-200" if data_dir and (data_dir / "flores200").is_dir() \
                else offline
        path = folder / f"{kind}_{code}.jsonl"
        path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                        encoding="utf-8")
        return {"dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(path)}}}
    raise ValueError(f"unknown evaluation task {kind!r}")


def render(config: RunConfig, languages: list[Language],
           folder: Path) -> tuple[list[EvalTask], dict[tuple[str, str], str]]:
    """Write the task YAMLs into `folder`; the tasks, and (language, task) -> why missing."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEMPLATES / "utils.py", folder / "utils.py")
    data_dir = eval_data_dir(config.evaluation.data_dir)
    tasks: list[EvalTask] = []
    missing: dict[tuple[str, str], str] = {}
    for lang in languages:
        for kind in config.evaluation.tasks:
            source = data_source(kind, lang, data_dir, folder)
            if isinstance(source, str):
                missing[(lang.flores_code, kind)] = source
                continue
            english_first = kind == "flores_en_xx"
            values = {
                "registry": str(registry_dir()), "flores_code": lang.flores_code,
                "mmlu_key": global_mmlu_key(lang) or "", "direction": kind.removeprefix("flores_"),
                "source_name": "English" if english_first else lang.name,
                "target_name": lang.name if english_first else "English",
                "max_gen_tokens": config.evaluation.max_gen_tokens,
                "repetition_penalty": config.evaluation.repetition_penalty,
            }
            template = "flores.yaml" if kind in GENERATION else f"{kind}.yaml"
            text = string.Template((TEMPLATES / template).read_text(encoding="utf-8"))
            body = text.substitute(values) + "\n" + yaml.safe_dump(source, allow_unicode=True)
            name = yaml.safe_load(body.replace("!function", "")).get("task")
            (folder / f"{name}.yaml").write_text(body, encoding="utf-8")
            tasks.append(EvalTask(kind, lang.flores_code, name, kind in GENERATION))
    return tasks, missing
