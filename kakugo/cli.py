"""`kakugo` command line: run | generate | train | evaluate | serve | push | languages | models |
config."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kakugo import __version__, logs
from kakugo.config import RunConfig, load_config
from kakugo.errors import BAD_INPUT, RUN_FAILURES, LanguageError
from kakugo.languages import (
    EVAL_SETS,
    coverage,
    eval_data_dir,
    paper54,
    parse_language_list,
    resolve,
)
from kakugo.models import EMBEDDED, build_embedded
from kakugo.run import distill_batch

EXIT_FAILED = 1  # the run failed: every language, or the output root could not be written
EXIT_BAD_INPUT = 2  # config, languages, models, sources
# 3 (kakugo.run.EXIT_PARTIAL): some languages failed
EXIT_INTERNAL = 4  # a bug of ours (or of a library): the traceback is in the log


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set training.learning_rate=2e-5 (repeatable)",
    )


def _config_from(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if getattr(args, "languages", None):
        overrides.append(f"languages={json.dumps(parse_language_list(args.languages))}")
    if getattr(args, "output", None):
        overrides.append(f"output={json.dumps(args.output)}")
    if getattr(args, "host", None):
        overrides.append(f"serving.host={json.dumps(args.host)}")
    if getattr(args, "port", None):
        overrides.append(f"serving.port={args.port}")
    return load_config(args.config, overrides)


def cmd_languages(args: argparse.Namespace) -> int:
    data_dir = eval_data_dir(args.data_dir)
    items = [i for item in args.items for i in parse_language_list(item)]
    if items:
        results = []
        failed = False
        for item in items:
            try:
                results.append((item, resolve(item, data_dir)))
            except LanguageError as exc:
                print_error(exc)
                failed = True
        if failed:
            return EXIT_BAD_INPUT
    else:
        results = [(lang.iso639_3, lang) for lang in paper54(data_dir)]
    rows = []
    for item, lang in results:
        cov = coverage(lang, data_dir)
        rows.append({"input": item, "flores_code": lang.flores_code, "iso639_3": lang.iso639_3,
                     "script": lang.script, "name": lang.name, **cov})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    mark = {True: "yes", False: "-", None: "?"}
    header = ["input", "flores_code", "iso639_3", "name", *EVAL_SETS]
    table = [header] + [
        [r["input"], r["flores_code"], r["iso639_3"], r["name"], *(mark[r[s]] for s in EVAL_SETS)]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not data_dir:
        print("(FLORES/SIB-200 coverage from the hub lists; set KAKUGO_DATA_DIR for local data)",
              file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    for name in args.names or list(EMBEDDED):
        print(f"embedded:{name} -> {build_embedded(name)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _config_from(args)
    if args.schema:
        print(json.dumps(RunConfig.model_json_schema(), indent=2))
    else:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return distill_batch(_config_from(args), restart=args.restart)


def cmd_generate(args: argparse.Namespace) -> int:
    return distill_batch(_config_from(args), restart=args.restart,
                         stages=("generate", "dataset"))


def cmd_train(args: argparse.Namespace) -> int:
    return distill_batch(_config_from(args), restart=args.restart, stages=("train", "report"))


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.url:
        args.overrides.append(f"evaluation.url={json.dumps(args.url)}")
    return distill_batch(_config_from(args), restart=args.restart,
                         stages=("evaluate", "report"))


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    import yaml

    from kakugo.run import connect_ray, resolve_languages
    from kakugo.serving import api_key_digest, deploy_config, served_models, start, stop
    from kakugo.storage import Storage

    config = _config_from(args)
    api_key_digest(config)  # a key asked for but not set: refused before anything starts
    languages = resolve_languages(config)
    only = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    models = served_models(config, languages, Storage(config.output), only)
    if args.deploy_config:
        with open(args.deploy_config, "w", encoding="utf-8") as f:
            yaml.safe_dump(deploy_config(config, models), f, sort_keys=False)
        print(f"wrote {args.deploy_config}: serve deploy {args.deploy_config}")
        return 0
    connect_ray(config)
    url = start(config, models)
    print(f"serving {', '.join(m.name for m in models)} at {url}"
          + (" (API key required)" if config.serving.api_key_env else ""), flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C, `kill`, a container stop
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(1):
        pass
    print("stopping the app", flush=True)
    stop()
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from kakugo.publish import push
    from kakugo.run import resolve_languages
    from kakugo.storage import Storage

    config = _config_from(args)
    kinds = (args.only,) if args.only else ("dataset", "model")
    done = push(config, resolve_languages(config), Storage(config.output),
                dry_run=args.dry_run, kinds=kinds)
    for item in done:
        verb = "pushed" if item["uploaded"] else "would push"
        print(f"{verb} {item['language']} {item['kind']} -> {item['repo_id']} "
              f"({len(item['files'])} files: {', '.join(item['files'])})")
    if args.dry_run:
        print(f"dry run: {len(done)} repos planned, every card checked; nothing was sent")
    return 0


def _add_batch_args(p: argparse.ArgumentParser, restart: bool = True) -> None:
    _add_config_args(p)
    p.add_argument("--languages", "--language", dest="languages",
                   help="comma-separated names/codes, or @FILE")
    p.add_argument("--output", help="output root: local path or s3://bucket/prefix")
    if restart:
        p.add_argument("--restart", action="store_true",
                       help="start over in an output root written by another config")



def _add_output_args(p: argparse.ArgumentParser, default) -> None:
    """-v / -q, accepted before the subcommand and after it."""
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="kakugo's debug lines too")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="keep Ray, vLLM and the other libraries to their warnings (progress "
                   "bars and INFO lines off), so that kakugo's own progress lines stand out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kakugo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kakugo {__version__}")
    _add_output_args(parser, default=False)
    # after the subcommand: unset unless given, so that they do not undo the ones before it
    output = argparse.ArgumentParser(add_help=False)
    _add_output_args(output, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=lambda **kw:
                                argparse.ArgumentParser(parents=[output], **kw))

    p = sub.add_parser("run", help="the whole pipeline for a batch of languages")
    _add_batch_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate", help="prompts, responses and translations, then the "
                       "filtered SFT dataset of each language (Ray Data + vLLM)")
    _add_batch_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="fine-tune the student on each language's SFT set "
                       "(Ray Train + DeepSpeed ZeRO-3)")
    _add_batch_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score the base and the tuned student of each "
                       "language with lm-eval (SIB-200, FLORES chrF++, Belebele, Global-MMLU)")
    _add_batch_args(p)
    p.add_argument("--url", help="an OpenAI-compatible endpoint (…/v1) already serving the "
                   "students (default: start the run's Serve app)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="serve the teacher, the base student and the tuned "
                       "students behind one OpenAI-compatible API (Ray Serve), until Ctrl-C")
    _add_batch_args(p, restart=False)
    p.add_argument("--models", help="comma-separated model names to serve (default: all)")
    p.add_argument("--deploy-config", metavar="FILE",
                   help="write a `serve deploy` config file for the same app instead")
    p.add_argument("--host", help="address to bind (serving.host; default 127.0.0.1: set "
                   "serving.api_key_env before binding another)")
    p.add_argument("--port", type=int, help="port of the API (serving.port)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("push", help="upload each language's dataset and model with their "
                       "cards to the Hugging Face Hub (kakugo-{iso}, kakugo-3B-{iso})")
    _add_batch_args(p, restart=False)
    p.add_argument("--dry-run", action="store_true",
                   help="check the cards and list what would be uploaded; send nothing")
    p.add_argument("--only", choices=["dataset", "model"], help="push only this kind")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("languages", help="resolve languages and show evaluation coverage")
    p.add_argument("items", nargs="*", help="names or codes (default: the paper's 54)")
    p.add_argument("--data-dir", help="local evaluation data (default: $KAKUGO_DATA_DIR)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_languages)

    p = sub.add_parser("models", help="build the embedded default models into the cache")
    p.add_argument("action", choices=["build"])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(EMBEDDED)}")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("config", help="print the resolved config (or its JSON schema)")
    _add_config_args(p)
    p.add_argument("--schema", action="store_true")
    p.set_defaults(func=cmd_config)
    return parser


def print_error(exc: Exception) -> None:
    """`error: ...` on a line of its own: progress bars leave the cursor mid-line (and a
    job's log interleaves stdout and stderr), so stdout is flushed and a newline comes
    first, and log readers can match `^error: `."""
    sys.stdout.flush()
    sys.stderr.write(f"\nerror: {exc}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.set_quiet(args.quiet)
    logs.configure(args.verbose)
    try:
        return args.func(args)
    except BAD_INPUT as exc:
        print_error(exc)
        return EXIT_BAD_INPUT
    except RUN_FAILURES as exc:
        print_error(exc)
        return EXIT_FAILED
    except Exception as exc:  # not one of ours: say so, with the traceback for a report
        logging.getLogger("kakugo").exception("internal error")
        print_error(RuntimeError(f"internal error ({type(exc).__name__}: {exc}); the "
                                 "traceback is above: please report it"))
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
