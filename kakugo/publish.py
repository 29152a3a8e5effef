"""`kakugo push`: a language's SFT dataset and tuned model to the Hugging Face Hub.

Names follow the paper (`publish.dataset_repo` kakugo-{iso639_3}, `publish.model_repo`
kakugo-3B-{iso639_3}) under `publish.namespace`. Every upload of the batch is planned and
its card checked (YAML header parses, the fields the Hub and the card's readers need are
there, the language matches) before anything is sent; `--dry-run` stops there and lists
what would go where. The model card's `datasets` field is set to the dataset repo it is
published with. The token comes from HF_TOKEN or a `hf auth login`, and is never printed.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kakugo.config import RunConfig
from kakugo.errors import PublishError
from kakugo.languages import Language
from kakugo.layout import dataset_dir, tuned_model_dir
from kakugo.models import repo_id
from kakugo.storage import COMPLETE, Storage

log = logging.getLogger("kakugo.publish")

Kind = Literal["dataset", "model"]
KINDS: tuple[Kind, ...] = ("dataset", "model")
# the header fields each card must have: what the Hub indexes and what our readers use
REQUIRED_CARD_FIELDS: dict[Kind, tuple[str, ...]] = {
    "dataset": ("language", "license", "pretty_name", "task_categories", "configs", "kakugo"),
    "model": ("language", "license", "library_name", "pipeline_tag", "base_model", "datasets"),
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


def check_card(header: dict[str, Any], kind: Kind, lang: Language, where: str) -> None:
    missing = [k for k in REQUIRED_CARD_FIELDS[kind] if not header.get(k)]
    if missing:
        raise PublishError(f"{where}: the {kind} card lacks {', '.join(missing)} (required: "
                           f"{', '.join(REQUIRED_CARD_FIELDS[kind])})")
    if lang.tag not in (header["language"] or []):
        raise PublishError(f"{where}: the card's language is {header['language']!r}, not "
                           f"[{lang.tag!r}] ({lang})")


def with_header(text: str, header: dict[str, Any]) -> str:
    body = text[text.index("\n---", 4) + 4:]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---" + body


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
        if kind == "model":  # point at the dataset repo it is published with
            header["datasets"] = [repo_id(config, lang, "dataset")]
        check_card(header, kind, lang, where)
        uploads.append(Upload(code, kind, repo_id(config, lang, kind), folder, sorted(files),
                              with_header(text, header), header))
    return uploads


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
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp)
            for name in u.files:
                target = local / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(storage.read_bytes(f"{u.folder}/{name}"))
            (local / "README.md").write_text(u.card, encoding="utf-8")
            api.create_repo(u.repo_id, repo_type=u.kind, private=config.publish.private,
                            exist_ok=True)
            api.upload_folder(folder_path=str(local), repo_id=u.repo_id, repo_type=u.kind,
                              commit_message=f"kakugo {config.name}: {u.language} {u.kind}")
        log.info("pushed %s %s -> https://huggingface.co/%s%s (%d files)", u.language, u.kind,
                 "datasets/" if u.kind == "dataset" else "", u.repo_id, len(u.files))
        done.append({**u.describe(), "uploaded": True})
    return done
