"""Teacher requests for each generation step, as flat rows (pure Python, no Ray).

A request row carries everything an engine pass needs and everything the next step needs:
  id, language (FLORES code), language_name, category (topic | scenario | context),
  step, parent_id, seed, specific, item (the text this row is about), context (a source
  text, for context prompts), n (items expected from a list call; 0 for free text),
  schema (a JSON schema the reply must follow, "" for the list schema of n items or free
  text), max_tokens (0 for the configured default), system, user, meta (a JSON object
  carried through untouched).
A prompt row (what the responses are written for) carries:
  id, language, language_name, category, source_step, parent_id, prompt, context,
  task (what a context prompt asks for, e.g. "translate"; "" for other prompts),
  revise (selected for revision), revised (the prompt is the teacher's rewrite),
  original_prompt.
Ids are stable: derived from the language, the step and the parent's id and position, so
a rerun produces the same ids and resume can skip what exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from kakugo.config import RunConfig
from kakugo.ids import fraction_of, stable_id
from kakugo.prompts import render

Row = dict[str, Any]

REQUEST_COLUMNS = ("id", "language", "language_name", "category", "step", "parent_id", "seed",
                   "specific", "item", "context", "n", "schema", "max_tokens", "system", "user",
                   "meta")
PROMPT_COLUMNS = ("id", "language", "language_name", "category", "source_step", "parent_id",
                  "prompt", "context", "task", "revise", "revised", "original_prompt")

REVISIONS = (
    "sounds more natural, the way a native speaker would really write it",
    "adds some personal context about why the user is asking",
    "asks for the answer in a specific format or length",
    "is longer and more detailed",
    "adds one or two related follow-up questions",
)
TASK_INSTRUCTIONS = {
    "translate": "translate it (or a part of it) into another language",
    "summarize": "summarize it",
    "improve": "improve or rewrite it",
    "classify": "classify it (its topic, tone or kind of text)",
    "qa": "answer a specific question about its content",
}


def make_request(*, language: str, language_name: str, category: str, step: str, parent_id: str,
         position: int, item: str, seed: str, specific: bool, n: int, user: str,
         system: str, context: str = "", meta: dict | None = None, schema: str = "",
         max_tokens: int = 0) -> Row:
    return {
        "id": stable_id(language, step, parent_id, position, item),
        "language": language,
        "language_name": language_name,
        "category": category,
        "step": step,
        "parent_id": parent_id,
        "seed": seed,
        "specific": specific,
        "item": item,
        "context": context,
        "n": n,
        "schema": schema,
        "max_tokens": max_tokens,
        "system": system,
        "user": user,
        "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
    }


def writer_system(language_name: str) -> str:
    return render("writer_system", language=language_name)


# --------------------------------------------------------------------------- level 1


def seed_requests(language: str, language_name: str, config: RunConfig) -> list[Row]:
    """Macro-topic requests for every seed, and the two broad-scenario requests."""
    topics, scenarios = config.generation.topics, config.generation.scenarios
    system = writer_system(language_name)
    rows = []
    seeds = [(s, False) for s in topics.general_seeds] + [
        (s.format(language=language_name), True) for s in topics.language_seeds
    ]
    for position, (seed, specific) in enumerate(seeds):
        if topics.macro_topics_per_seed:
            rows.append(make_request(
                language=language, language_name=language_name, category="topic",
                step="macro_topics", parent_id="", position=position, item=seed, seed=seed,
                specific=specific, n=topics.macro_topics_per_seed, system=system,
                user=render("macro_topics", n=topics.macro_topics_per_seed, seed=seed,
                            specific=specific, language=language_name)))
    if scenarios.broad_scenarios:
        for position, specific in enumerate((False, True)):
            seed = "scenarios for speakers" if specific else "scenarios"
            rows.append(make_request(
                language=language, language_name=language_name, category="scenario",
                step="broad_scenarios", parent_id="", position=position, item=seed, seed=seed,
                specific=specific, n=scenarios.broad_scenarios, system=system,
                user=render("broad_scenarios", n=scenarios.broad_scenarios, specific=specific,
                            language=language_name)))
    return rows


def context_requests(language: str, language_name: str, texts: Iterable[str],
                     config: RunConfig) -> Iterator[Row]:
    """One request per context text; task types cycle with their weights (QA weighted)."""
    ctx = config.generation.contexts
    cycle = [task for task, weight in ctx.task_weights.items() for _ in range(weight)]
    system = writer_system(language_name)
    for position, text in enumerate(texts):
        task = cycle[position % len(cycle)]
        yield make_request(
            language=language, language_name=language_name, category="context",
            step="context_prompts", parent_id="", position=position, item=task, seed=task,
            specific=True, n=ctx.prompts_per_text, system=system, context=text,
            user=render("context_prompts", n=ctx.prompts_per_text, context=text,
                        task_instruction=TASK_INSTRUCTIONS[task], language=language_name))


# --------------------------------------------------------------------------- levels 2 and 3


def child_requests(parent: Row, items: list[str], config: RunConfig) -> Iterator[Row]:
    """The requests that a finished list call leads to (one per returned item)."""
    step = parent["step"]
    topics, scenarios = config.generation.topics, config.generation.scenarios
    name = parent["language_name"]
    common = {"language": parent["language"], "language_name": name,
              "category": parent["category"], "parent_id": parent["id"],
              "seed": parent["seed"], "specific": parent["specific"], "system": parent["system"]}
    for position, item in enumerate(items):
        if step == "macro_topics" and topics.topics_per_macro_topic:
            yield make_request(**common, step="topics", position=position, item=item,
                       n=topics.topics_per_macro_topic,
                       user=render("topics", n=topics.topics_per_macro_topic, parent=item,
                                   seed=parent["seed"], specific=parent["specific"],
                                   language=name))
        elif step in ("broad_scenarios", "detailed_scenarios") and scenarios.prompts_per_scenario:
            yield make_request(**common, step="scenario_prompts", position=position, item=item,
                       n=scenarios.prompts_per_scenario,
                       user=render("scenario_prompts", n=scenarios.prompts_per_scenario,
                                   item=item, language=name))
        if step == "broad_scenarios" and scenarios.detailed_per_broad:
            yield make_request(**common, step="detailed_scenarios", position=position, item=item,
                       n=scenarios.detailed_per_broad,
                       user=render("detailed_scenarios", n=scenarios.detailed_per_broad,
                                   parent=item, specific=parent["specific"], language=name))


def prompts_per_topic(item_id: str, config: RunConfig) -> int:
    """1..3 prompts per topic item (paper), chosen deterministically from the item's id."""
    t = config.generation.topics
    span = t.max_prompts_per_topic - t.min_prompts_per_topic + 1
    return t.min_prompts_per_topic + int(fraction_of(item_id, config.seed) * span)


def topic_prompt_requests(items: list[Row], config: RunConfig) -> Iterator[Row]:
    """Prompt requests over the de-duplicated union of one language's seeds, macros, topics.

    `items` are rows with language, language_name, seed, specific, item, system and id.
    """
    seen: set[str] = set()
    for row in items:
        key = " ".join(row["item"].casefold().split())
        if not key or key in seen:
            continue
        seen.add(key)
        n = prompts_per_topic(row["id"], config)
        if n == 0:
            continue
        yield make_request(language=row["language"], language_name=row["language_name"],
                   category="topic", step="topic_prompts", parent_id=row["id"], position=0,
                   item=row["item"], seed=row["seed"], specific=row["specific"], n=n,
                   system=row["system"],
                   user=render("topic_prompts", n=n, item=row["item"],
                               language=row["language_name"]))


# --------------------------------------------------------------------------- prompts


def prompt_rows(out: Row, config: RunConfig) -> list[Row]:
    """Prompt rows from a finished prompt-writing call; for contexts one of k is kept."""
    if out["step"] not in PROMPT_STEPS or out["error"] or out["finish_reason"] != "stop":
        return []
    items = list(enumerate(out["items"]))
    if out["step"] == "context_prompts" and items:
        items = [items[int(fraction_of(out["id"], config.seed) * len(items))]]
    return [
        {"id": stable_id(out["id"], position), "language": out["language"],
         "language_name": out["language_name"], "category": out["category"],
         "source_step": out["step"], "parent_id": out["id"], "prompt": text,
         "context": out["context"],
         "task": out["seed"] if out["step"] == "context_prompts" else "",
         "revise": False, "revised": False, "original_prompt": ""}
        for position, text in items if text.strip()
    ]


PROMPT_STEPS = ("topic_prompts", "scenario_prompts", "context_prompts")


def mark_revisions(rows: list[Row], fraction: float, seed: int) -> list[Row]:
    """Select exactly floor(fraction * len(rows)) rows of one language and category."""
    ranked = sorted(rows, key=lambda r: fraction_of(r["id"], ("revise", seed)))
    chosen = {r["id"] for r in ranked[: int(fraction * len(rows))]}
    return [{**r, "revise": r["id"] in chosen} for r in rows]


def revise_request(prompt: Row) -> Row:
    instruction = REVISIONS[int(fraction_of(prompt["id"], "kind") * len(REVISIONS))]
    name = prompt["language_name"]
    return make_request(language=prompt["language"], language_name=name, category=prompt["category"],
                step="revise", parent_id=prompt["id"], position=0, item=prompt["prompt"],
                seed=prompt["source_step"], specific=True, n=1, context=prompt["context"],
                meta={"task": prompt.get("task", "")}, system=writer_system(name),
                user=render("revise", prompt=prompt["prompt"], revision_instruction=instruction,
                            language=name))


def revised_prompt(out: Row) -> Row:
    """The final prompt row from a revision reply (the original when the rewrite failed)."""
    ok = not out["error"] and out["finish_reason"] == "stop" and out["items"]
    return {"id": out["parent_id"], "language": out["language"],
            "language_name": out["language_name"], "category": out["category"],
            "source_step": out["seed"], "parent_id": out["parent_id"],
            "prompt": out["items"][0] if ok else out["item"], "context": out["context"],
            "task": json.loads(out["meta"] or "{}").get("task", ""),
            "revise": True, "revised": bool(ok), "original_prompt": out["item"]}


def response_request(prompt: Row) -> Row:
    """The request that answers a final prompt (context texts are prepended)."""
    user = f"{prompt['context']}\n\n{prompt['prompt']}" if prompt["context"] else prompt["prompt"]
    name = prompt["language_name"]
    row = make_request(language=prompt["language"], language_name=name, category=prompt["category"],
               step="respond", parent_id=prompt["parent_id"], position=0, item=prompt["prompt"],
               seed=prompt["source_step"], specific=False, n=0, context=prompt["context"],
               system=render("responder_system", language=name), user=user,
               meta={"revised": prompt["revised"], "original_prompt": prompt["original_prompt"],
                     "task": prompt.get("task", "")})
    row["id"] = prompt["id"]  # a response has the id of its prompt
    return row
