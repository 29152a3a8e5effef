"""The generation stage for a whole batch of languages, as five engine passes.

    seeds   : macro-topics for every seed, broad scenarios, prompts from context texts,
              and the translations of the English instruction set (stage 3)
    expand  : topics of every macro-topic, detailed scenarios and prompts of broad ones
    items   : prompts for the de-duplicated union of seeds/macro-topics/topics, and for
              every detailed scenario
    (prompts: one table of every prompt; the revision share of each category is marked)
    revise  : the marked prompts rewritten by the teacher
    respond : answers in the language to the final prompts (revised where marked),
              reasoning kept apart

Every pass sends the rows of all languages and all categories through the same engine
replicas (one `build_processor` per pass), so engine start-up is paid five times per
batch, not once per language and step. Outputs: `{output}/generate/{step}/language=X/`
(parquet, hive-partitioned) plus `{output}/generate/{step}/_manifest.json`. A finished
step with the same config hash is skipped; an interrupted pass resumes by row ids.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from kakugo import layout
from kakugo.config import RunConfig
from kakugo.generate import requests as rq
from kakugo.generate.contexts import iter_texts, truncate_tokens
from kakugo.generate.engine_pass import run_pass
from kakugo.generate.translate import load_source, translation_requests
from kakugo.languages import Language, eval_data_dir
from kakugo.models import model_tokenizer
from kakugo.steps import Stage, flat_map, frame
from kakugo.storage import Storage, StorageError

log = logging.getLogger("kakugo.generate")

ITEM_COLUMNS = ("id", "language", "language_name", "seed", "specific", "system", "item", "order")


class GenerationStage(Stage):
    root = layout.GENERATE
    steps = layout.GENERATE_STEPS
    engine_steps = layout.ENGINE_STEPS
    config_sections = ("teacher", "student", "generation", "translation", "seed")

    def engine_pass(self, requests, step: str) -> dict[str, Any]:
        return run_pass(requests, self.config, self._teacher, self.storage, self.folder(step),
                        self.codes)

    def translation_sources(self) -> list[dict[str, Any]]:
        """The English conversations to translate (the same ones for every language)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.teacher_path())
        sources = load_source(self.config.translation, self.config.seed,
                              lambda text: len(tokenizer(text).input_ids))
        log.info("  translation source %s: %d conversations", self.config.translation.source,
                 len(sources))
        return sources

    def read_inputs(self) -> dict[str, str]:
        """Read each language's own inputs (its context texts) before any engine work, one
        language at a time, into the output root (where the seeds step reads them back);
        leave out of the stage the languages whose inputs cannot be read: {code: error}.
        The shared inputs (the teacher, the English set) fail the whole stage instead."""
        import pyarrow as pa

        ctx = self.config.generation.contexts
        data_dir = eval_data_dir(self.config.evaluation.data_dir)
        failed: dict[str, str] = {}
        for lang in self.missing("seeds"):  # the texts are read by the seeds step only
            try:
                texts = list(iter_texts(ctx.source, lang, data_dir, ctx.max_texts))
            except StorageError:  # the output root or the source's store is down: not
                raise             # this language's fault
            except Exception as exc:  # noqa: BLE001 - e.g. no FineWeb-2 config, no file
                failed[lang.flores_code] = (f"context texts ({ctx.source}) cannot be read: "
                                            f"{type(exc).__name__}: {exc}")
                log.error("generate: %s left out: %s", lang.flores_code,
                          failed[lang.flores_code])
                continue
            self.storage.write_parquet(layout.context_texts(lang.flores_code),
                                       pa.table({"text": pa.array(texts, pa.string())}))
        self.keep([lang for lang in self.languages if lang.flores_code not in failed])
        return failed

    def build_seeds(self):
        """Each language's seed requests, built by a Ray task of its own from its context
        texts (read back from the output root) and the English set (one shared object):
        the driver holds neither, whatever the number of languages."""
        import ray

        config, storage = self.config, self.storage
        sources = self.translation_sources()
        shared = ray.put(sources)

        def language_seeds(row: dict[str, Any]) -> list[dict[str, Any]]:
            code, name = row["language"], row["language_name"]
            texts = storage.read_parquet(layout.context_texts(code)).column("text").to_pylist()
            rows = rq.seed_requests(code, name, config)
            if texts:
                tokenizer = model_tokenizer(config.student.model)
                texts = truncate_tokens(texts, tokenizer, config.generation.contexts
                                        .max_text_tokens)
                rows.extend(rq.context_requests(code, name, texts, config))
            rows.extend(translation_requests(code, name, ray.get(shared), config))
            return rows

        for lang in self.languages:
            log.info("  seeds     %-14s context texts and %d translations", lang.flores_code,
                     len(sources))
        languages = [{"language": lang.flores_code, "language_name": lang.name}
                     for lang in self.languages]
        return flat_map(ray.data.from_items(languages, override_num_blocks=len(languages)),
                        language_seeds, rq.REQUEST_COLUMNS)

    def build_expand(self):
        config = self.config

        def children(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["error"] or row["finish_reason"] != "stop":
                return []
            return list(rq.child_requests(row, list(row["items"]), config))

        return flat_map(self.read("seeds"), children, rq.REQUEST_COLUMNS)

    def build_items(self):
        config = self.config

        def topic_items(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["category"] != "topic" or row["error"] or row["finish_reason"] != "stop":
                return []
            depth = {"macro_topics": 1, "topics": 2}[row["step"]]
            base = {k: row[k] for k in ("language", "language_name", "seed", "specific",
                                        "system")}
            items = [{**base, "id": rq.stable_id(row["id"], i), "item": text,
                      "order": f"{depth}-{row['id']}-{i:04d}"}
                     for i, text in enumerate(row["items"])]
            if depth == 1:  # the seed itself belongs to the union too
                items.append({**base, "id": rq.stable_id(row["id"], "seed"),
                              "item": row["item"], "order": f"0-{row['id']}"})
            return items

        def union_prompts(group: pd.DataFrame) -> pd.DataFrame:
            rows = group.sort_values("order").to_dict("records")
            return frame(list(rq.topic_prompt_requests(rows, config)), rq.REQUEST_COLUMNS)

        def detailed_children(row: dict[str, Any]) -> list[dict[str, Any]]:
            if row["step"] != "detailed_scenarios" or row["error"] or \
                    row["finish_reason"] != "stop":
                return []
            return list(rq.child_requests(row, list(row["items"]), config))

        items = flat_map(self.read("seeds").union(self.read("expand")), topic_items,
                          ITEM_COLUMNS)
        topic_requests = items.groupby("language", num_partitions=len(self.codes)).map_groups(
            union_prompts, batch_format="pandas")
        detailed = flat_map(self.read("expand"), detailed_children, rq.REQUEST_COLUMNS)
        return topic_requests.union(detailed)

    def build_prompts(self):
        config = self.config
        fraction = config.generation.revision_fraction

        def mark(group: pd.DataFrame) -> pd.DataFrame:
            rows = group.sort_values("id").to_dict("records")
            return frame(rq.mark_revisions(rows, fraction, config.seed), rq.PROMPT_COLUMNS)

        outputs = self.read("seeds").union(self.read("expand"), self.read("items"))
        prompts = flat_map(outputs, lambda row: rq.prompt_rows(row, config), rq.PROMPT_COLUMNS)
        groups = prompts.groupby(["language", "category"], num_partitions=3 * len(self.codes))
        return groups.map_groups(mark, batch_format="pandas")

    def build_revise(self):
        from ray.data.expressions import col

        return self.read("prompts").filter(expr=col("revise")).map(rq.revise_request)

    def build_respond(self):
        from ray.data.expressions import col

        kept = self.read("prompts").filter(expr=~col("revise"))
        final = kept.union(self.read("revise").map(rq.revised_prompt))
        return final.map(rq.response_request)


def generate(config: RunConfig, languages: list[Language], storage: Storage) -> dict:
    """Run (or resume) the generation stage for a batch; returns per-step manifests, and
    under "failed" the languages whose own inputs could not be read (left out; the others
    go on)."""
    stage = GenerationStage(config, languages, storage)
    failed = stage.read_inputs()
    out = stage.run() if stage.languages else {}
    return {**out, "failed": failed}
