"""Language-ID filter on real FLORES-200 devtest sentences of the paper's 54 languages.

For each language: whether the model can judge it, top-1 accuracy (the model's best
guess is the language or its macrolanguage), and the share of sentences that pass the
filter at the configured minimum confidence. Prints JSON and writes
benchmarks/results/language_id.json.

    KAKUGO_DATA_DIR=../shared/data python benchmarks/language_id.py [--model embedded:lid176]
"""

from __future__ import annotations

import argparse
import time

from kakugo.dataset.filters import LanguageIdentifier, _accepted
from kakugo.languages import eval_data_dir, paper54


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded:lid176")
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--sentences", type=int, default=1012)
    parser.add_argument("--out", default="benchmarks/results/language_id.json")
    args = parser.parse_args()
    data_dir = eval_data_dir()
    if data_dir is None:
        raise SystemExit("set KAKUGO_DATA_DIR to the evaluation data folder")
    lid = LanguageIdentifier(args.model)
    per_language, started, judged = {}, time.monotonic(), 0
    for lang in paper54(data_dir):
        path = data_dir / "flores200" / "devtest" / f"{lang.flores_code}.devtest"
        entry: dict = {"name": lang.name, "covered": lid.covers(lang)}
        if not path.is_file():
            entry["note"] = "no FLORES-200 devtest file"
        elif entry["covered"]:
            lines = path.read_text().splitlines()[: args.sentences]
            accepted = _accepted(lang)
            top1 = sum(lid.detect(line)[0][0] in accepted for line in lines)
            passed = sum(lid.verdict([line], lang, args.min_confidence)[0] == "ok"
                         for line in lines)
            judged += len(lines)
            entry.update(sentences=len(lines), top1_accuracy=round(top1 / len(lines), 4),
                         pass_rate=round(passed / len(lines), 4))
        per_language[lang.flores_code] = entry
    covered = [e for e in per_language.values() if "top1_accuracy" in e]
    result = {
        "model": args.model,
        "min_confidence": args.min_confidence,
        "languages": len(per_language),
        "covered": sum(e["covered"] for e in per_language.values()),
        "not_covered": sorted(c for c, e in per_language.items() if not e["covered"]),
        "mean_top1_accuracy": round(sum(e["top1_accuracy"] for e in covered) / len(covered), 4),
        "mean_pass_rate": round(sum(e["pass_rate"] for e in covered) / len(covered), 4),
        "sentences_per_second": round(judged * 2 / (time.monotonic() - started), 1),
        "per_language": per_language,
    }
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("language_id", result, args.out)


if __name__ == "__main__":
    main()
