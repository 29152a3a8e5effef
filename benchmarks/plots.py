"""A PNG next to each benchmark result: benchmarks/results/NAME.json -> NAME.png.

    python benchmarks/plots.py                     # every results/*.json
    python benchmarks/plots.py results/scaling.json

Each benchmark's JSON is drawn as a row of bar panels (what it compares, with the machine
it ran on in the title).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
Panels = list[tuple[str, dict[str, float]]]


def _scaling(d: dict) -> Panels:
    batches = {f"{b['languages']} lang.": b for b in d["batches"]}
    panels = [("wall seconds per batch", {k: b["wall_seconds"] for k, b in batches.items()}),
              ("wall seconds per language", {k: b["wall_seconds_per_language"]
                                             for k, b in batches.items()}),
              ("generated rows per second", {k: b["rows_per_second"]
                                             for k, b in batches.items()})]
    if "reference_flow" in d:
        ref = d["reference_flow"]
        panels.append((f"{len(ref['languages'])} languages: wall seconds",
                       {"our batch run": ref["ours"]["wall_seconds"],
                        "reference flow": ref["reference"]["wall_seconds"]}))
    return panels


def _generation(d: dict) -> Panels:
    panels: Panels = []
    if "batch_wall_seconds" in d:
        panels += [("wall seconds", {"one batch pipeline": d["batch_wall_seconds"],
                                     "one pipeline per language": sum(
                                         d["per_language_wall_seconds"].values())}),
                   ("respond pass tokens/s, start-up in",
                    {"pipeline": d["respond_pass"]["tokens_per_second"],
                     "direct vLLM": d["direct_engine"]["tokens_per_second"]})]
    if "steady_state" in d:
        steady = d["steady_state"]
        title = f"steady tokens/s, {steady['requests']} requests\n{steady.get('teacher', '')}"
        panels.append((title,
                       {"pipeline": steady["pipeline"]["steady_tokens_per_second"],
                        "direct vLLM": steady["direct_engine"]["steady_tokens_per_second"]}))
    return panels


def _training(d: dict) -> Panels:
    if "runs" not in d:  # one worker count (results before runs)
        return [("tokens/s", {"Ray Train + ZeRO-3": d["ray_train_tokens_per_second"],
                              "bare loop": d["bare_loop_tokens_per_second"]}),
                ("packing efficiency", {"packed rows": d["packing_efficiency"]})]
    bars = {}
    for r in d["runs"]:
        if isinstance(d["bare_loop_tokens_per_second"], list):  # the bare loop around each
            bars[f"bare loop, around {r['workers']}"] = r["bare_loop_tokens_per_second"]
        bars[f"ours, {r['workers']} worker(s)"] = r["ray_train_tokens_per_second"]
    if not isinstance(d["bare_loop_tokens_per_second"], list):  # measured once
        bars = {"bare loop": d["bare_loop_tokens_per_second"], **bars}
    return [("tokens/s", bars),
            ("packing efficiency", {"packed rows": d["packing_efficiency"]})]


def _serving(d: dict) -> Panels:
    sides = {label: d[key] for label, key in (("Serve", "ray_serve"),
                                              ("vLLM", "vllm_openai_server")) if key in d}
    if any("levels" not in v for v in sides.values()):  # one concurrency (before levels)
        return [("requests/s", {k: v["requests_per_second"] for k, v in sides.items()}),
                ("latency p99 (s)", {k: v["latency_p99_s"] for k, v in sides.items()})]
    levels = list(next(iter(sides.values()))["levels"])
    return [(title, {f"{k} {c}": v["levels"][c][key] for c in levels
                     for k, v in sides.items()})
            for title, key in (("requests/s at C clients", "requests_per_second"),
                               ("latency p99 (s) at C clients", "latency_p99_s"))]


def _scaling_paper(d: dict) -> Panels:
    runs = {f"{r['languages']} lang.": r for r in d["runs"]}
    return [("orchestration ms per request", {k: r["orchestration_ms_per_request"]
                                              for k, r in runs.items()}),
            ("driver peak RSS (MiB)", {k: r["driver_peak_rss_mib"] for k, r in runs.items()}),
            ("teacher requests", {k: r["teacher_requests"] for k, r in runs.items()}),
            ("files written", {k: r["files"] for k, r in runs.items()})]


def _gpu_train(d: dict) -> Panels:
    sides = {"bare loop": d["bare_loop"], "ours (ZeRO-3)": d["ours_zero3"]}
    return [("tokens/s", {k: v["tokens_per_second"] for k, v in sides.items()}),
            ("MFU", {k: v["mfu"] for k, v in sides.items()}),
            ("peak memory (GiB)", {k: v["peak_memory_gib"] for k, v in sides.items()})]


def _zero3_overhead(d: dict) -> Panels:
    traffic = d["traffic"]
    sides = {"bare bf16": traffic["bare_bf16"], "ours, fp32 master": traffic["ours_master_fp32"],
             "ours, bf16 master": traffic["ours_master_bf16"]}
    host = {f"{k.split('_')[0]}{', ckpt' if part == 'checkpointing' else ''}": v
            for part in ("no_checkpointing", "checkpointing")
            for k, v in d["host_time"][part]["ms_per_step"].items()
            if k == "bare" or k == d["host_time"][part]["our_config"]}
    return [("bytes per parameter and step", {k: v["bytes_per_param"] for k, v in sides.items()}),
            (f"Granite-Micro ms at {traffic['bandwidth_tb_per_s']} TB/s",
             {k: v["ms_at_bandwidth"] for k, v in sides.items()}),
            (f"host ms per step, {d['host_time']['layers']} layers", host)]


def _language_id(d: dict) -> Panels:
    covered = {k: v for k, v in d["per_language"].items() if "top1_accuracy" in v}
    return [("top-1 accuracy", {k[:3]: v["top1_accuracy"] for k, v in covered.items()}),
            (f"pass rate at {d['min_confidence']}", {k[:3]: v["pass_rate"]
                                                     for k, v in covered.items()})]


def _eval_fidelity(d: dict) -> Panels:
    return [("accuracy", {"our task": d["accuracy_ours"],
                          "registry task": d["accuracy_registry"]})]


def _step_reads(d: dict) -> Panels:
    return [(f"{name}: median seconds", case["median_seconds"])
            for name, case in d["cases"].items()]


PANELS: dict[str, Callable[[dict], Panels]] = {
    "scaling": _scaling, "scaling-paper": _scaling_paper, "generation": _generation, "training": _training,
    "serving": _serving, "gpu_train": _gpu_train, "language_id": _language_id,
    "eval_fidelity": _eval_fidelity, "zero3_overhead": _zero3_overhead,
    "step_reads": _step_reads}


def cpu_machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, run on CPU"


def save_result(name: str, result: dict, path: str | Path | None = None) -> Path:
    """A benchmark's result, headed by its name, the machine (run on CPU) and the date
    unless it states its own: kept as `path` (results/NAME.json by default), printed, and
    drawn next to it."""
    result = {"benchmark": name, "machine": cpu_machine(), "date": time.strftime("%Y-%m-%d"),
              **result}
    path = Path(path) if path else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    plot(path)
    return path


def plot(path: Path) -> Path | None:
    """Draw `path`'s panels into path.with_suffix('.png'); None for an unknown benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(path).read_text())
    draw = PANELS.get(data.get("benchmark", ""))
    if draw is None:
        return None
    panels = draw(data)
    wide = max(len(values) for _, values in panels) > 8
    fig, axes = plt.subplots(len(panels) if wide else 1, 1 if wide else len(panels),
                             figsize=(14, 3.2 * len(panels)) if wide else
                             (3.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, values) in zip(axes.flat, panels, strict=True):
        bars = ax.bar(list(values), list(values.values()), color="tab:blue")
        if not wide:
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=90 if wide else 20, labelsize=8)
    machine = data.get("device") or data.get("machine", "")
    fig.suptitle(f"{data['benchmark']} ({machine})", fontsize=11)
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str]) -> None:
    paths = [Path(p) for p in argv] or sorted(RESULTS.glob("*.json"))
    for path in paths:
        out = plot(path)
        print(f"{path.name}: {'-> ' + out.name if out else 'no plot for this benchmark'}")


if __name__ == "__main__":
    main(sys.argv[1:])
