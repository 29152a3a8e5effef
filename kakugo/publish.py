"""`kakugo push`: a language's SFT dataset and tuned model to the Hugging Face Hub.

Names follow the paper (`publish.dataset_repo` kakugo-{iso639_3}, `publish.model_repo`
kakugo-3B-{iso639_3}) under `publish.namespace`. Every upload of the batch is planned and
its card checked (YAML header parses, the fields the Hub and the card's readers need are
there, the language matches) before anything is sent; `--dry-run` stops there and lists
what would go where. The model card's `datasets` field is set to the dataset repo it is
published with. The token comes from HF_TOKEN or a `hf auth login`, and is never printed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from kakugo.config import RunConfig
from kakugo.errors import PublishError
from kakugo.languages import EVAL_HUB_DATASETS, Language
from kakugo.layout import dataset_dir, result_files, tuned_model_dir
from kakugo.models import ModelSource, repo_id, tuned_model_name
from kakugo.storage import COMPLETE, Storage

log = logging.getLogger("kakugo.publish")

Kind = Literal["dataset", "model"]
KINDS: tuple[Kind, ...] = ("dataset", "model")
# the header fields each card must have: what the Hub indexes and what our readers use
REQUIRED_CARD_FIELDS: dict[Kind, tuple[str, ...]] = {
    "dataset": ("language", "license", "pretty_name", "task_categories", "configs", "kakugo"),
    "model": ("language", "license", "library_name", "pipeline_tag", "datasets"),
}
# what goes up: the deliverable, not the rejects or training leftovers
DATASET_FILES = ("README.md", "dataset_info.json", "data/")


@dataclass
class Upload:
    """One repo's worth of files: from `folder` of the run's storage to `repo_id`."""

    language: str
    kind: Kind
    repo_id: str
    folder: str
    files: list[str]  # relative to folder
    card: str  # README.md as it will be uploaded
    header: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"language": self.language, "kind": self.kind, "repo_id": self.repo_id,
                "repo_type": self.kind, "files": self.files,
                "card": {k: self.header[k] for k in ("language", "license") if k in self.header}}


def card_header(text: str, where: str) -> dict[str, Any]:
    """The YAML header of a card (between the leading `---` lines)."""
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        raise PublishError(f"{where}: no YAML header (the card must start with a '---' block)")
    try:
        header = yaml.safe_load(text[4:text.index("\n---", 4)])
    except yaml.YAMLError as exc:
        raise PublishError(f"{where}: the YAML header does not parse: {exc}") from None
    if not isinstance(header, dict):
        raise PublishError(f"{where}: the YAML header is not a mapping")
    return header


def check_card(header: dict[str, Any], kind: Kind, lang: Language, where: str,
               base_model: str | None = None) -> None:
    """The fields the Hub and our readers need; a model of a hub student names it as its
    `base_model` (and one of a local or embedded student names none)."""
    required = REQUIRED_CARD_FIELDS[kind] + (("base_model",) if base_model else ())
    missing = [k for k in required if not header.get(k)]
    if missing:
        raise PublishError(f"{where}: the {kind} card lacks {', '.join(missing)} (required: "
                           f"{', '.join(REQUIRED_CARD_FIELDS[kind])})")
    if lang.tag not in (header["language"] or []):
        raise PublishError(f"{where}: the card's language is {header['language']!r}, not "
                           f"[{lang.tag!r}] ({lang})")


def plan_language(config: RunConfig, lang: Language, storage: Storage,
                  kinds: tuple[Kind, ...] = KINDS) -> list[Upload]:
    code = lang.flores_code
    uploads = []
    for kind in kinds:
        folder = dataset_dir(code) if kind == "dataset" else tuned_model_dir(code)
        files = [name.removeprefix(folder + "/") for name in storage.list(folder, recursive=True)
                 if not name.endswith("/" + COMPLETE)]
        if kind == "model" and not storage.is_complete(folder):
            raise PublishError(f"{lang}: the model at {storage.uri(folder)} was not exported "
                               "whole (no completion marker): run training again")
        if kind == "dataset":
            files = [f for f in files if f.startswith(DATASET_FILES)]
        stage = "the dataset stage" if kind == "dataset" else "training"
        if not files:
            raise PublishError(f"{lang}: no {kind} at {storage.uri(folder)}; run {stage} first")
        if "README.md" not in files:
            raise PublishError(f"{lang}: {storage.uri(folder, 'README.md')} is missing (the "
                               f"{kind} card, written by {stage})")
        if kind == "dataset" and not any(f.endswith(".parquet") for f in files):
            raise PublishError(f"{lang}: no parquet files under {storage.uri(folder, 'data')}")
        if kind == "model" and not any(f.endswith(".safetensors") for f in files):
            raise PublishError(f"{lang}: no safetensors weights under {storage.uri(folder)}")
        where = storage.uri(folder, "README.md")
        text = storage.read_text(f"{folder}/README.md")
        header = card_header(text, where)
        base = None
        if kind == "model":
            text, header = model_card_for_push(config, lang, storage, text, where)
            base = config.student.model if \
                ModelSource.parse(config.student.model).kind == "hub" else None
        check_card(header, kind, lang, where, base)
        uploads.append(Upload(code, kind, repo_id(config, lang, kind), folder, sorted(files),
                              text, header))
    return uploads


def eval_results(config: RunConfig, lang: Language, storage: Storage) -> list[Any]:
    """The tuned student's scores, as the Hub shows them (model-index): one per task."""
    from huggingface_hub import EvalResult

    out = []
    for rel in result_files(storage, lang.flores_code):
        result = storage.read_json(rel)
        if result.get("model") != tuned_model_name(config, lang):
            continue
        kind = result["kind"]
        flores = kind.startswith("flores")
        metric = "chrf" if flores else "acc"
        value = result["results"].get(f"{metric},none")
        if value is None:
            continue
        out.append(EvalResult(
            task_type="translation" if flores else "text-classification",
            dataset_type=EVAL_HUB_DATASETS["flores200" if flores else kind],
            dataset_name=f"{kind} ({lang.flores_code})", metric_type=metric,
            metric_value=round(float(value), 4),
            dataset_split="devtest" if flores else "test"))
    return out


def model_card_for_push(config: RunConfig, lang: Language, storage: Storage, text: str,
                        where: str) -> tuple[str, dict[str, Any]]:
    """The exported card with what is known only at push time: the licence
    (`publish.model_license`), the dataset repo it is published with, and its scores."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except ValueError as exc:  # the header parsed as YAML but not as card data
        raise PublishError(f"{where}: not a model card: {exc}") from None
    card.data.license = config.publish.model_license
    card.data.datasets = [repo_id(config, lang, "dataset")]
    card.data.model_name = repo_id(config, lang, "model")
    results = eval_results(config, lang, storage)
    if results:
        card.data.eval_results = results
    new = str(card)
    return new, card_header(new, where)


def plan(config: RunConfig, languages: list[Language], storage: Storage,
         kinds: tuple[Kind, ...] = KINDS) -> list[Upload]:
    """Every upload of the batch, each card checked; nothing is sent."""
    return [u for lang in languages for u in plan_language(config, lang, storage, kinds)]


def hub_api(api: Any = None) -> Any:
    """An authenticated `huggingface_hub.HfApi` (token from HF_TOKEN or the login cache)."""
    if api is not None:
        return api
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                           "(or use --dry-run)")
    return HfApi()


def commit_operations(u: Upload, storage: Storage, files: contextlib.ExitStack) -> list[Any]:
    """One upload's files, read where they are: a local output root's files by path, an
    S3 one's as seekable streams (huggingface_hub reads them to hash, then to send); no
    copy of the weights in between. The card is the one planned (push-time fields)."""
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=u.card.encode())]
    for name in u.files:
        if name == "README.md":
            continue
        rel = f"{u.folder}/{name}"
        source = storage.path(rel) if not storage.is_s3 else \
            files.enter_context(storage.open_reader(rel))
        ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=source))
    return ops


def push(config: RunConfig, languages: list[Language], storage: Storage, *,
         dry_run: bool = False, kinds: tuple[Kind, ...] = KINDS, api: Any = None
         ) -> list[dict[str, Any]]:
    """Upload (or with dry_run only plan) the datasets and models; returns what was done."""
    uploads = plan(config, languages, storage, kinds)
    if dry_run:
        return [{**u.describe(), "uploaded": False} for u in uploads]
    api = hub_api(api)
    done = []
    for u in uploads:
        api.create_repo(u.repo_id, repo_type=u.kind, private=config.publish.private,
                        exist_ok=True)
        with contextlib.ExitStack() as files:
            api.create_commit(
                repo_id=u.repo_id, repo_type=u.kind, operations=commit_operations(
                    u, storage, files),
                commit_message=f"kakugo {config.name}: {u.language} {u.kind}")
        log.info("pushed %s %s -> https://huggingface.co/%s%s (%d files)", u.language, u.kind,
                 "datasets/" if u.kind == "dataset" else "", u.repo_id, len(u.files))
        done.append({**u.describe(), "uploaded": True})
    return done
