"""Stage 4: the SFT dataset of each language, from the generated responses and the
translated conversations, after the quality filters.

    dataset/candidates : one row per response and per translation, with a verdict column per
                 filter (translation rules, basic, empty, language_id, decontamination,
                 dedup) and `reject` (the first failing filter whose action is drop,
                 "" = kept); a failing verdict of a filter that only annotates stays in
                 its column and is counted in the card
    dataset/sft        : the stats of every language's SFT set, written per language at
                 `{output}/{flores_code}/dataset/`:
                   data/*.parquet     kept rows, `messages` in OpenAI chat format
                   rejects/*.parquet  rejected rows with the rule that failed
                   README.md          dataset card (YAML header with sizes and counts)
                   dataset_info.json  LLaMA-Factory entry for data/ (sharegpt/openai tags)

The filters are in kakugo/dataset/filters.py, the rows' format and the token budget in
writer.py, the card in card.py. A language with fewer kept rows than `filters.min_rows_per_language` is marked failed
(its counts in the error) and is not trained on a token-sized set; the others go on.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from kakugo import layout
from kakugo.config import FiltersConfig, RunConfig
from kakugo.costs import teacher_devices
from kakugo.dataset.card import dataset_card, llamafactory_info
from kakugo.dataset.filters import (
    OK,
    UNKNOWN,
    LanguageIdentifier,
    basic_verdict,
    check_translation,
    contamination_index,
    duplicates,
    empty_verdict,
)
from kakugo.dataset.writer import (
    REJECT_COLUMNS,
    SFT_COLUMNS,
    WRITE_BATCH_ROWS,
    TokenCounter,
    budget_plan,
    has_trace,
    sft_messages,
)
from kakugo.languages import Language, eval_data_dir
from kakugo.steps import Stage, frame
from kakugo.storage import Storage

log = logging.getLogger("kakugo.dataset")

CANDIDATE_COLUMNS = (
    "id", "language", "category", "kind", "task", "prompt", "response", "reasoning",
    "turns", "revised", "prompt_tokens", "completion_tokens", "finish_reason", "error",
    "translation", "basic", "empty", "language_id", "language_id_confidence",
    "decontamination", "dedup", "reject",
)
# Filter verdict columns, in the order a reject reason is chosen.
VERDICTS = ("translation", "basic", "empty", "language_id", "decontamination", "dedup")


def _candidate(row: dict[str, Any], kind: str, **values: Any) -> dict[str, Any]:
    base = {c: "" for c in CANDIDATE_COLUMNS}
    base.update(id=row["id"], language=row["language"], category=row["category"], kind=kind,
                reasoning=row.get("reasoning") or "", revised=False,
                prompt_tokens=int(row["prompt_tokens"]),
                completion_tokens=int(row["completion_tokens"]),
                finish_reason=row["finish_reason"], error=row["error"],
                language_id_confidence=0.0)
    base.update(values)
    return base


def response_candidate(row: dict[str, Any]) -> dict[str, Any]:
    """A generated row: the user message (context text + prompt) and the teacher's answer;
    `task` is the task a context prompt asks for (e.g. "translate"), "" otherwise."""
    meta = json.loads(row["meta"] or "{}")
    return _candidate(row, "generated", prompt=row["user"], response=row["text"],
                      revised=bool(meta.get("revised")), task=meta.get("task", ""))


class TranslationCheck:
    """Translation replies -> candidate rows, each checked against the translation rules
    with the teacher's tokenizer (one per actor)."""

    def __init__(self, config: RunConfig, teacher_path: str):
        from transformers import AutoTokenizer

        self.cfg = config.translation
        self.tokenizer = AutoTokenizer.from_pretrained(teacher_path)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = []
        for row in batch.to_dict("records"):
            turns, rule, detail = check_translation(
                json.loads(row["item"]), row["text"],
                finished=row["finish_reason"] == "stop" and not row["error"],
                count_tokens=self.count_tokens, cfg=self.cfg)
            users = [t["content"] for t in turns if t["role"] == "user"]
            answers = [t["content"] for t in turns if t["role"] == "assistant"]
            out.append(_candidate(
                row, "translated", prompt=users[0] if users else "",
                response=answers[-1] if answers else "",
                turns=json.dumps(turns, ensure_ascii=False),
                translation=f"{rule}: {detail}" if rule else OK))
        return frame(out, CANDIDATE_COLUMNS)


def expected_in_language(row: dict[str, Any]) -> list[str]:
    """The texts of a candidate that its task expects in the target language: the prompt
    (context prompts carry the context text, in the language), and the response unless
    the prompt asks for a translation (its answer is in another language)."""
    texts = [row["prompt"]]
    if row["task"] != "translate":
        texts.append(row["response"])
    return [t for t in texts if t]


def judge(row: dict[str, Any], lang: Language, filters: FiltersConfig,
          lid: LanguageIdentifier | None, data_dir: Path | None) -> dict[str, Any]:
    """The row-wise verdicts (basic, empty, language_id, decontamination) of one candidate."""
    texts = [row["prompt"], row["response"]]
    if row["kind"] == "translated" and row["turns"]:
        texts = [t["content"] for t in json.loads(row["turns"])]
    if filters.basic != "off":
        row["basic"] = basic_verdict(row["prompt"], row["response"], row["finish_reason"],
                                     row["error"])
    if filters.empty != "off":
        row["empty"] = empty_verdict(row["prompt"], row["response"])
    if lid is not None and (sides := expected_in_language(row)):
        verdict, confidence = lid.verdict(sides, lang, filters.language_id_min_confidence)
        row["language_id"], row["language_id_confidence"] = verdict, round(confidence, 4)
    if filters.decontamination != "off":
        index = contamination_index(lang, data_dir, filters.decontamination_ngram)
        hits = [index.match(text) for text in texts if text]
        hit = next((h for h in hits if h), None)
        row["decontamination"] = f"matches {hit}" if hit else OK
    return row


class RowVerdicts:
    """Ray Data actor: row-wise filters, with the LID model and n-gram indexes loaded once."""

    def __init__(self, config: RunConfig, languages: list[Language]):
        self.filters = config.filters
        self.languages = {lang.flores_code: lang for lang in languages}
        self.data_dir = eval_data_dir(config.evaluation.data_dir)
        self.lid = (LanguageIdentifier(self.filters.language_id_model)
                    if self.filters.language_id != "off" else None)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = [judge(row, self.languages[row["language"]], self.filters, self.lid,
                      self.data_dir) for row in batch.to_dict("records")]
        return frame(rows, CANDIDATE_COLUMNS)


def failing(row: dict[str, Any], filters: FiltersConfig, names: tuple[str, ...]) -> str:
    """The first of `names` whose verdict fails and whose action is drop ("" if none)."""
    for name in names:
        verdict = row[name]
        action = "drop" if name == "translation" else getattr(filters, name)
        if action == "drop" and verdict not in ("", OK, UNKNOWN):
            return f"{name}: {verdict}"
    return ""


def reject_rule(reject: str) -> str:
    """'translation: parse: not JSON' -> 'translation/parse', 'basic: unfinished' ->
    'basic/unfinished', 'language_id: wrong:eng' -> 'language_id/wrong',
    'decontamination: matches sib200/test' -> 'decontamination/sib200'."""
    name, _, detail = reject.partition(": ")
    if not detail:
        return name
    word = detail.removeprefix("matches ").split()[0]
    return f"{name}/{word.split(':')[0].split('/')[0]}"


def dedup_language(group: pd.DataFrame, filters: FiltersConfig) -> pd.DataFrame:
    """Dedup one language's prompts (among rows no other filter drops), then `reject`."""
    rows = sorted(group.to_dict("records"), key=lambda r: (r["kind"], r["id"]))
    before = VERDICTS[:-1]
    if filters.dedup != "off":
        eligible = [r for r in rows if not failing(r, filters, before)]
        found = duplicates(((r["id"], r["prompt"]) for r in eligible), filters.dedup_threshold)
        for r in eligible:
            r["dedup"] = f"duplicate of {found[r['id']]}" if r["id"] in found else OK
    for r in rows:
        r["reject"] = failing(r, filters, VERDICTS)
    return frame(rows, CANDIDATE_COLUMNS)


def filter_summary(counts: pd.DataFrame, filters: FiltersConfig) -> dict[str, dict[str, Any]]:
    """Per check: its action and how many of a language's candidates it dropped (the first
    dropping check names a reject) and flagged without dropping (a failing verdict on a
    kept row: checks that annotate, or rows an earlier check dropped count under it)."""
    kept = counts[counts["reject"] == ""]
    out = {}
    for name in VERDICTS:
        action = "drop" if name == "translation" else getattr(filters, name)
        failed = ~kept[name].isin(["", OK, UNKNOWN]) if name in kept else []
        out[name] = {"action": action,
                     "dropped": int(counts["reject"].str.startswith(f"{name}:").sum()),
                     "annotated": int(sum(failed))}
    return out


class DatasetStage(Stage):
    root = layout.DATASET
    steps = layout.DATASET_STEPS
    config_sections = ("teacher", "student", "generation", "translation", "filters",
                       "dataset", "seed")

    def decontamination_sources(self, lang: Language) -> dict[str, str] | None:
        """Where decontamination read each evaluation set of a language (built here, in the
        driver, so that a set that cannot be read fails the stage before any row is judged)."""
        filters = self.config.filters
        if filters.decontamination == "off":
            return None
        data_dir = eval_data_dir(self.config.evaluation.data_dir)
        return contamination_index(lang, data_dir, filters.decontamination_ngram).where

    def build_candidates(self):
        import ray
        from ray.data.expressions import col

        for lang in self.languages:
            self.decontamination_sources(lang)

        responses = self.read("respond", root="generate").map(response_candidate)
        translated = self.read("seeds", root="generate").filter(
            expr=col("step") == "translate").map_batches(
            TranslationCheck, fn_constructor_args=(self.config, self.teacher_path()),
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
        judged = responses.union(translated).map_batches(
            RowVerdicts, fn_constructor_args=(self.config, self.languages),
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5)
        filters = self.config.filters
        return judged.groupby("language", num_partitions=len(self.codes)).map_groups(
            lambda group: dedup_language(group, filters), batch_format="pandas")

    def build_sft(self) -> dict[str, dict[str, Any]]:
        stats = {}
        for lang in self.languages:
            stats[lang.flores_code] = self.write_language(lang)
        return stats

    def candidates(self):
        import pyarrow.dataset as pads

        return pads.dataset(self.storage.path(self.folder("candidates")), format="parquet",
                            filesystem=self.storage.fs, partitioning="hive")

    def candidate_counts(self, code: str) -> pd.DataFrame:
        import pyarrow.dataset as pads

        dataset = self.candidates()
        columns = ["id", "category", "kind", "reject", *(v for v in VERDICTS
                                                         if v in dataset.schema.names)]
        return dataset.to_table(columns=columns,
                                filter=pads.field("language") == code).to_pandas()

    def kept_batches(self, code: str, columns: list[str] | None = None):
        import pyarrow.dataset as pads

        return self.candidates().to_batches(
            columns=columns, batch_size=WRITE_BATCH_ROWS,
            filter=(pads.field("language") == code) & (pads.field("reject") == ""))

    def token_plan(self, code: str) -> tuple[dict[str, bool] | None, int]:
        """The token-limited variant's plan for a language (see budget_plan), or None
        without `dataset.token_budget`; also the tokens it uses."""
        budget = self.config.dataset.token_budget
        if budget is None:
            return None, 0
        from kakugo.models import ModelSource

        count = TokenCounter(ModelSource.parse(self.config.student.model).materialize())
        rows: list[tuple[str, int, int]] = []
        columns = ["id", "kind", "prompt", "response", "reasoning", "turns"]
        for batch in self.kept_batches(code, columns):
            records = batch.to_pylist()
            answers = count([sft_messages(r, self.config, trace=False) for r in records])
            traced = count([sft_messages(r, self.config) for r in records])
            rows += [(r["id"], a, t - a if has_trace(r) else 0)
                     for r, a, t in zip(records, answers, traced, strict=True)]
        return budget_plan(rows, budget, self.config.seed)

    def write_language(self, lang: Language) -> dict[str, Any]:
        code, config = lang.flores_code, self.config
        folder = layout.dataset_dir(code)
        self.storage.delete(folder)
        plan, planned_tokens = self.token_plan(code)
        # the language's verdicts, streamed batch by batch out of the candidates (plain
        # pyarrow: the heavy work is done, this is a split into kept and rejected rows)
        import pyarrow as pa
        import pyarrow.dataset as pads

        candidates = self.candidates()
        batches = candidates.to_batches(filter=pads.field("language") == code,
                                        batch_size=WRITE_BATCH_ROWS)
        # fixed schemas: every file of a folder reads back as one table
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        schemas = {"data": pa.schema([*(candidates.schema.field(c) for c in SFT_COLUMNS
                                        if c != "messages"), pa.field("messages", messages)]),
                   "rejects": pa.schema([candidates.schema.field(c) for c in REJECT_COLUMNS])}
        traces = 0
        for index, batch in enumerate(batches):
            rows = batch.to_pylist()
            if plan is not None:  # rows the token budget has no room for
                for row in rows:
                    if not row["reject"] and row["id"] not in plan:
                        row["reject"] = "token_budget"
            trace = {row["id"]: True if plan is None else plan[row["id"]]
                     for row in rows if not row["reject"]}
            traces += sum(has_trace(row) and trace[row["id"]] for row in rows
                          if not row["reject"])
            kept = [{**{c: row[c] for c in SFT_COLUMNS if c != "messages"},
                     "messages": sft_messages(row, config, trace[row["id"]])}
                    for row in rows if not row["reject"]]
            rejected = [{c: row[c] for c in REJECT_COLUMNS} for row in rows if row["reject"]]
            for part, table in (("data", kept), ("rejects", rejected)):
                if table:
                    self.storage.write_parquet(f"{folder}/{part}/part-{index:05d}.parquet",
                                               pa.Table.from_pylist(table, schemas[part]))
        counts = self.candidate_counts(code)
        if plan is not None:
            counts.loc[(counts["reject"] == "") & ~counts["id"].isin(list(plan)), "reject"] = (
                "token_budget")
        kept = counts[counts["reject"] == ""]
        rejected = counts[counts["reject"] != ""]
        stats = {
            "rows": len(kept),
            "categories": {str(k): int(v) for k, v in
                           kept["category"].value_counts().sort_index().items()},
            "candidates": len(counts),
            "rejects": dict(sorted(Counter(map(reject_rule, rejected["reject"])).items())),
            "filters": filter_summary(counts, config.filters),
            "language_id": dict(sorted(Counter(
                v.split(":")[0] for v in counts.get("language_id", []) if v).items())),
            "decontaminated_against": self.decontamination_sources(lang),
            "rows_with_trace": int(traces),
            "token_budget": config.dataset.token_budget,
            "budget_tokens_used": planned_tokens if plan is not None else None,
        }
        stats.update(self.teacher_costs(code))
        self.storage.write_text(f"{folder}/README.md", dataset_card(lang, config, stats))
        self.storage.write_json(f"{folder}/dataset_info.json", llamafactory_info(lang))
        return stats

    def teacher_costs(self, code: str) -> dict[str, Any]:
        """Teacher tokens (prompt + completion, and of the completion those of reasoning
        traces) and engine-seconds spent on this language, over every engine step."""
        tokens = reasoning = seconds = 0.0
        devices = set()
        for step in layout.ENGINE_STEPS:
            manifest = self.storage.read_json(
                layout.manifest(layout.step_folder(layout.GENERATE, step)), default={})
            entry = manifest.get("languages", {}).get(code, {})
            tokens += entry.get("prompt_tokens", 0) + entry.get("completion_tokens", 0)
            reasoning += entry.get("reasoning_tokens", 0)
            seconds += entry.get("engine_seconds", 0.0)
            if entry and manifest.get("device"):
                devices.add(manifest["device"])
        return {"generation_tokens": int(tokens), "reasoning_tokens": int(reasoning),
                "engine_seconds": round(seconds, 2),
                "accelerator": ", ".join(sorted(devices)) or teacher_devices(self.config)[0]}


def build_datasets(config: RunConfig, languages: list[Language], storage: Storage) -> dict:
    """Build (or resume) the SFT datasets of a batch; returns per-step manifests, and under
    "failed" the languages that kept fewer than `filters.min_rows_per_language` rows."""
    stage = DatasetStage(config, languages, storage)
    out = stage.run()
    minimum = config.filters.min_rows_per_language
    kept = (stage.manifest("sft") or {}).get("languages", {})
    out["failed"] = {
        code: f"DatasetTooSmallError: {kept[code]['rows']} rows kept, "
              f"filters.min_rows_per_language is {minimum} "
              f"(rejected: {kept[code]['rejects'] or 0})"
        for code in stage.codes if code in kept and kept[code]["rows"] < minimum}
    return out
