"""The batch report, rewritten at the end of every run from what the stages left in storage:

  report.json   per language: status (done / failed with stage and error / incomplete),
                rows per generation step, dataset rows, training summary, evaluation
                scores (base, tuned, delta), $ per stage; the cost ledger and its prices
  report.md     the same as tables, with the cost compared to the paper's under-$50 per
                language
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kakugo import layout
from kakugo.config import RunConfig
from kakugo.costs import (
    LEDGER_STAGES,
    PAPER_USD_PER_LANGUAGE,
    ledger,
    usd_by_stage,
)
from kakugo.languages import Language
from kakugo.storage import Storage

log = logging.getLogger("kakugo.report")


def evaluation_rows(storage: Storage) -> list[dict[str, Any]]:
    """The evaluation table (eval/results.csv), numbers as floats, empty cells as None."""
    import csv
    import io

    if not storage.exists(layout.EVAL_TABLE):
        return []
    rows = list(csv.DictReader(io.StringIO(storage.read_text(layout.EVAL_TABLE))))
    for row in rows:
        for key in ("base", "tuned", "delta"):
            row[key] = float(row[key]) if row[key] else None
    return rows


def language_summary(config: RunConfig, lang: Language, storage: Storage,
                     failure: dict[str, str] | None, entries: list[dict],
                     eval_rows: list[dict], manifests: dict[str, dict]) -> dict[str, Any]:
    from kakugo.models import tuned_model_name

    code = lang.flores_code
    generated = {}
    tokens = {"prompt": 0, "completion": 0, "reasoning": 0}
    for step in layout.GENERATE_STEPS:
        entry = manifests[layout.step_folder(layout.GENERATE, step)].get("languages", {}).get(
            code)
        if entry:
            generated[step] = entry["rows"]
            for kind in tokens:
                tokens[kind] += entry.get(f"{kind}_tokens", 0)
    dataset = manifests[layout.step_folder(layout.DATASET, "sft")]
    trained = manifests[layout.train_dir(code)]
    training = None
    if trained:
        metrics = trained.get("metrics") or {}
        training = {"steps": trained["total_steps"], "train_rows": trained["train_rows"],
                    "loss": metrics.get("loss"), "val_loss": metrics.get("val_loss"),
                    "wall_seconds": trained["wall_seconds"],
                    "model": storage.uri(layout.tuned_model_dir(code)),
                    "served_as": tuned_model_name(config, lang)}
    scores = [{k: r[k] for k in ("task", "metric", "base", "tuned", "delta", "note")}
              for r in eval_rows if r["language"] == code]
    complete = bool(training) and any(s["tuned"] is not None for s in scores)
    status = "failed" if failure else ("done" if complete else "incomplete")
    return {"flores_code": code, "name": lang.name, "status": status,
            "failed_stage": failure["stage"] if failure else None,
            "error": failure["error"] if failure else None,
            "generated_rows": generated,
            # completion tokens include the reasoning traces' (counted apart too)
            "teacher_tokens": tokens,
            "dataset_rows": (dataset.get("languages", {}).get(code) or {}).get("rows"),
            # per check: its action, the rows it dropped and the rows it flagged but kept
            "filters": (dataset.get("languages", {}).get(code) or {}).get("filters") or {},
            "training": training, "evaluation": scores,
            "usd": usd_by_stage(entries, code)}


def build_report(config: RunConfig, languages: list[Language], storage: Storage,
                 failed: dict[str, dict[str, str]]) -> dict[str, Any]:
    from kakugo.evaluate.runner import decoding_note

    manifests = layout.read_manifests(storage, [lang.flores_code for lang in languages])
    entries = ledger(config, languages, storage, manifests)
    eval_rows = evaluation_rows(storage)
    langs = [language_summary(config, lang, storage, failed.get(lang.flores_code), entries,
                              eval_rows, manifests) for lang in languages]
    totals = [entry["usd"]["total"] for entry in langs]
    mean = sum(totals) / len(totals) if totals else 0.0
    return {
        "run": config.name, "output": storage.root, "config_hash": config.digest(),
        "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "status": {s: sum(e["status"] == s for e in langs)
                   for s in ("done", "failed", "incomplete")},
        "languages": langs,
        "decoding": decoding_note(config),
        "cost": {"usd_total": round(sum(totals), 4), "usd_per_language": round(mean, 4),
                 "paper_usd_per_language": PAPER_USD_PER_LANGUAGE,
                 "within_paper_figure": mean < PAPER_USD_PER_LANGUAGE,
                 "price_per_hour": config.cluster.price_per_hour, "ledger": entries},
    }


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    cost = report["cost"]
    lines = [f"# Kakugo batch report: {report['run']}", "",
             (f"Output: `{report['output']}` (config {report['config_hash']}, "
              f"updated {report['updated']})."), "",
             "| language | name | status | teacher tokens out (reasoning) | dataset rows | "
             "training loss | " + " | ".join(f"$ {s}" for s in LEDGER_STAGES) + " | $ total |",
             "|" + "---|" * (7 + len(LEDGER_STAGES))]
    for lang in report["languages"]:
        training = lang["training"] or {}
        tokens = lang["teacher_tokens"]
        lines.append("| " + " | ".join(_cell(v) for v in (
            lang["flores_code"], lang["name"], lang["status"],
            f"{tokens['completion']} ({tokens['reasoning']})", lang["dataset_rows"],
            training.get("loss"), *(lang["usd"][s] for s in LEDGER_STAGES),
            lang["usd"]["total"])) + " |")
    verdict = "under" if cost["within_paper_figure"] else "over"
    lines += ["", f"Cost: ${cost['usd_per_language']:.4f} per language on average "
              f"(${cost['usd_total']:.4f} in all), {verdict} the paper's "
              f"${cost['paper_usd_per_language']:.0f} per language. Prices per device-hour: "
              + ", ".join(f"{k} ${v}" for k, v in sorted(cost["price_per_hour"].items()))
              + "."]
    failed = [lang for lang in report["languages"] if lang["status"] == "failed"]
    if failed:
        lines += ["", "## Failed languages", ""]
        lines += [f"- {lang['flores_code']} ({lang['name']}), in {lang['failed_stage']}: "
                  f"{_cell(lang['error'])}" for lang in failed]
    from kakugo.dataset.stage import VERDICTS  # the order the checks decide in

    checks = [(lang["flores_code"], name, lang["filters"][name])
              for lang in report["languages"] for name in VERDICTS
              if lang["filters"].get(name, {}).get("action", "off") != "off"]
    if checks:
        lines += ["", "## Dataset checks (rows dropped, and rows flagged but kept)", "",
                  "| language | check | action | dropped | flagged and kept |",
                  "|---|---|---|---|---|"]
        lines += [f"| {code} | {name} | {f['action']} | {f['dropped']} | {f['annotated']} |"
                  for code, name, f in checks]
    lines += ["", "## Evaluation (tuned vs base student)", "", report["decoding"], "",
              "| language | task | metric | base | tuned | delta | note |",
              "|---|---|---|---|---|---|---|"]
    for lang in report["languages"]:
        for row in lang["evaluation"]:
            lines.append("| " + " | ".join(_cell(v) for v in (
                lang["flores_code"], row["task"], row["metric"], row["base"], row["tuned"],
                row["delta"], row["note"])) + " |")
    return "\n".join(lines) + "\n"


def write_report(config: RunConfig, languages: list[Language], storage: Storage,
                 failed: dict[str, dict[str, str]]) -> dict[str, Any]:
    report = build_report(config, languages, storage, failed)
    storage.write_json(layout.REPORT_JSON, report)
    storage.write_text(layout.REPORT_MD, render_markdown(report))
    log.info("report: %s (%s); $%.4f per language (paper: under $%.0f)",
             storage.uri(layout.REPORT_MD),
             ", ".join(f"{n} {s}" for s, n in report["status"].items() if n),
             report["cost"]["usd_per_language"], PAPER_USD_PER_LANGUAGE)
    return report
