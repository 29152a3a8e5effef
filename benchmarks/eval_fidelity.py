"""Fidelity check of our evaluation tasks: prints JSON and writes
benchmarks/results/eval_fidelity.json.

SmolLM2-135M-Instruct (embedded, in-process transformers) on English SIB-200 (the local
rows), scored twice with lm-eval on the same documents:
  (a) through our task (kakugo/evaluate/tasks/sib200.yaml, rendered by our code);
  (b) through lm-eval's registry config `afrobench/sib/prompt_1/sib_eng.yaml` loaded as
      is, with only the dataset source pointed at the same local files (and its weighted
      F1 metric dropped: it loads a metric script from the hub).
The accuracies must be identical.

    KAKUGO_DATA_DIR=... python benchmarks/eval_fidelity.py --limit 100
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    from kakugo.config import load_config
    from kakugo.evaluate.runner import EvalModel, run_lm_eval
    from kakugo.evaluate.taskset import data_source, registry_dir, render
    from kakugo.languages import eval_data_dir, resolve
    from kakugo.models import ModelSource

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    config = load_config("configs/tiny-cpu.yaml", [
        'evaluation.tasks=["sib200"]', "evaluation.backend=hf", f"evaluation.limit={args.limit}"])
    eng = resolve("eng_Latn", eval_data_dir())
    model = EvalModel("smollm2-135m-instruct", "base",
                      ModelSource.parse("embedded:smollm2-135m-instruct").materialize(),
                      "base embedded:smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as tmp:
        tasks, _ = render(config, [eng], Path(tmp))
        ours = run_lm_eval(config, model, tasks, Path(tmp), None)[tasks[0].name]["results"]

        registry = load_yaml(registry_dir() / "afrobench/sib/prompt_1/sib_eng.yaml")
        registry.update(data_source("sib200", eng, eval_data_dir(), Path(tmp)))
        registry["metric_list"] = [m for m in registry["metric_list"] if m["metric"] == "acc"]
        registry["task"] = "registry_sib_eng_prompt_1"
        out = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": model.path, "device": "cpu",
                                    "dtype": "float32"},
            tasks=[registry], num_fewshot=config.evaluation.num_fewshot, limit=args.limit,
            task_manager=TaskManager(include_defaults=False), batch_size=1, bootstrap_iters=0,
            random_seed=config.seed, numpy_random_seed=config.seed,
            torch_random_seed=config.seed, fewshot_random_seed=config.seed)
        theirs = out["results"]["registry_sib_eng_prompt_1"]
    result = {"model": "SmolLM2-135M-Instruct (fp32, transformers)",
              "task": "SIB-200 eng_Latn, 3-shot, AfroBench prompt 1", "documents": args.limit,
              "accuracy_ours": ours["acc,none"], "accuracy_registry": theirs["acc,none"],
              "identical": ours["acc,none"] == theirs["acc,none"]}
    from plots import save_result  # benchmarks/plots.py, next to this script
    save_result("eval_fidelity", result)


if __name__ == "__main__":
    main()
