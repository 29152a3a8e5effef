"""Language resolution: what a user types -> a `Language` with ISO 639-3, script and FLORES code.

Names and codes come from langcodes + language-data (no hand-written name table). The
FLORES-200 code list comes from the local evaluation data when it is configured, else from
the NLLB code list that transformers ships. The paper's 54 languages are a data file
(configs/languages/paper54.yaml) that also pins the variety of a few macrolanguages.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import langcodes
import yaml
from langcodes.data_dicts import MACROLANGUAGES
from language_data import names as ld_names

from kakugo.errors import LanguageError

DATA_DIR_ENV = "KAKUGO_DATA_DIR"
PAPER54_FILE = Path(__file__).resolve().parent / "data" / "paper54.yaml"
FLORES_RE = re.compile(r"^([a-z]{3})_([A-Z][a-z]{3})$")
CODE_RE = re.compile(r"^[a-z]{2,3}$")
EVAL_SETS = ("flores200", "sib200", "belebele", "global_mmlu")
# The hub datasets of the evaluation sets (one config per language; what lm-eval's registry
# tasks read), for evaluation and decontamination where there is no local copy
EVAL_HUB_DATASETS = {"flores200": "openlanguagedata/flores_plus", "sib200": "Davlan/sib200",
                     "belebele": "facebook/belebele", "global_mmlu": "CohereForAI/Global-MMLU"}


@dataclass(frozen=True)
class Language:
    iso639_3: str
    script: str
    flores_code: str
    name: str
    autonym: str | None = None

    @property
    def tag(self) -> str:
        """The BCP-47 tag, e.g. 'gd' or 'swh'."""
        return str(langcodes.Language.get(self.iso639_3))

    def fill(self, template: str) -> str:
        """A name template filled in: {iso639_3}, {flores_code}, {tag}, {name}."""
        return template.format(iso639_3=self.iso639_3, flores_code=self.flores_code,
                               tag=self.tag, name=self.name)

    def __str__(self) -> str:
        return f"{self.name} ({self.flores_code})"


# --------------------------------------------------------------------------- data sources


def eval_data_dir(configured: str | None = None) -> Path | None:
    """The local evaluation data folder: the configured one, else $KAKUGO_DATA_DIR, else None."""
    value = configured or os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


@functools.cache
def flores_codes(data_dir: Path | None = None) -> frozenset[str]:
    """FLORES-200 language codes, read from the data when it is local."""
    if data_dir is not None and (data_dir / "flores200" / "devtest").is_dir():
        return frozenset(
            p.name.removesuffix(".devtest")
            for p in (data_dir / "flores200" / "devtest").glob("*.devtest")
            if FLORES_RE.match(p.name.removesuffix(".devtest"))
        )
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    return frozenset(FAIRSEQ_LANGUAGE_CODES)


@functools.cache
def sib200_codes(data_dir: Path | None = None) -> frozenset[str] | None:
    """SIB-200 language codes from the local data, else the hub's config list (None: unknown)."""
    if data_dir is not None and (data_dir / "sib200").is_dir():
        return frozenset(p.name for p in (data_dir / "sib200").iterdir() if p.is_dir())
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return None
    try:
        from datasets import get_dataset_config_names

        return frozenset(get_dataset_config_names(EVAL_HUB_DATASETS["sib200"]))
    except Exception:  # noqa: BLE001 - offline or refused: coverage unknown, not "no"
        return None


def _lm_eval_tasks_dir() -> Path | None:
    try:
        import lm_eval.tasks
    except ImportError:
        return None
    return Path(lm_eval.tasks.__file__).parent


@functools.cache
def belebele_codes() -> frozenset[str] | None:
    """Belebele languages, from lm-eval's registry task files (`belebele_{code}.yaml`)."""
    tasks = _lm_eval_tasks_dir()
    if tasks is None:
        return None
    return frozenset(
        p.stem.removeprefix("belebele_") for p in (tasks / "belebele").glob("belebele_*_*.yaml")
    )


@functools.cache
def global_mmlu_codes() -> frozenset[str] | None:
    """Global-MMLU languages (ISO 639-3), from lm-eval's registry (`global_mmlu/full/{lang}`)."""
    tasks = _lm_eval_tasks_dir()
    if tasks is None:
        return None
    return frozenset(
        langcodes.Language.get(p.name).to_alpha3()
        for p in (tasks / "global_mmlu" / "full").iterdir()
        if p.is_dir() and not p.name.startswith("_")
    )


@functools.cache
def paper_languages() -> tuple[dict, ...]:
    data = yaml.safe_load(PAPER54_FILE.read_text(encoding="utf-8"))
    return tuple(data["languages"])


@functools.cache
def _paper_by_iso3() -> dict[str, dict]:
    """Paper entries keyed by the ISO 639-3 of their code and of their FLORES code."""
    table: dict[str, dict] = {}
    for entry in paper_languages():
        table[_iso3(entry["code"])] = entry
        table[entry.get("iso639_3", entry["flores"][:3])] = entry
    return table


# --------------------------------------------------------------------------- resolution


def _iso3(code: str) -> str:
    return langcodes.Language.get(code).to_alpha3()


def _is_known_code(code: str) -> bool:
    if not langcodes.tag_is_valid(code):
        return False
    return not langcodes.Language.get(code).display_name().startswith("Unknown language")


def _normalize(name: str) -> str:
    return ld_names.normalize_name(name)


def _names_of(lang: str) -> set[str]:
    return {_normalize(n) for n in ld_names.code_to_names(lang).values()}


def _lookup_name(text: str) -> str:
    """An exact language name (English, endonym, or another language's) -> its language tag."""
    try:
        found = langcodes.find(text)
    except LookupError:
        raise LanguageError(
            f"unknown language {text!r}: not a language name, ISO 639 code or FLORES-200 code"
        ) from None
    lang = found.language
    if _normalize(text) not in _names_of(lang):
        # langcodes matches name prefixes ("Gaelic" -> Scottish Gaelic); we want exact names.
        raise LanguageError(
            f"unknown language {text!r}: no language has exactly that name; "
            f"closest match: {found.display_name()} ({lang})"
        )
    return lang


def _candidates(tag: str, flores: frozenset[str]) -> list[str]:
    """FLORES codes of a language, or of every member of a macrolanguage."""
    members = {tag} | {m for m, macro in MACROLANGUAGES.items() if macro == tag}
    iso3s = {_iso3(m) for m in members}
    return sorted(c for c in flores if c[:3] in iso3s)


def _standard_variety(tag: str, candidates: list[str]) -> list[str]:
    """A macrolanguage's name alone means its standard variety ("Latvian" -> Standard
    Latvian, lvs_Latn; "Malay" -> Standard Malay, zsm_Latn) when FLORES-200 carries one
    and none of the other members goes by the same name ("Arabic" could be Standard Arabic
    or Tunisian Arabic, "Norwegian" Bokmål or Nynorsk: still ambiguous)."""
    name = langcodes.Language.get(tag).display_name().lower()
    names = {c: _make(c[:3], c[4:], c).name.lower() for c in candidates}
    standard = [c for c, n in names.items() if n == f"standard {name}"]
    namesakes = [c for c, n in names.items() if name in n and c not in standard]
    return standard if len(standard) == 1 and not namesakes else candidates


def _make(iso3: str, script: str, flores_code: str) -> Language:
    tag = langcodes.Language.get(iso3)
    lang = tag.language or iso3
    autonym = ld_names.code_to_names(lang).get(lang) if _names_of(lang) else None
    return Language(
        iso639_3=iso3,
        script=script,
        flores_code=flores_code,
        name=tag.display_name(),
        autonym=autonym,
    )


def resolve(text: str, data_dir: Path | None = None) -> Language:
    """Resolve an English name, endonym, ISO 639-1/639-3 code or FLORES-200 code."""
    raw = text
    text = text.strip()
    if not text:
        raise LanguageError("empty language name: give a name such as 'Scottish Gaelic' or a code")
    flores = flores_codes(data_dir)

    m = FLORES_RE.match(text)
    if m:
        iso, script = m.groups()
        if not _is_known_code(iso):
            raise LanguageError(f"unknown language {raw!r}: {iso!r} is not an ISO 639-3 code")
        iso3 = _iso3(iso)
        return _make(iso3, script, f"{iso3}_{script}")

    if CODE_RE.match(text) and _is_known_code(text):
        tag = langcodes.Language.get(text).language
    else:
        tag = _lookup_name(text)

    iso3 = _iso3(tag)
    paper = _paper_by_iso3()
    if iso3 in paper:
        code = paper[iso3]["flores"]
        return _make(paper[iso3].get("iso639_3", code[:3]), code[4:], code)

    candidates = _candidates(tag, flores)
    if len(candidates) > 1:
        # Narrow down: the language itself in its likely script, else the paper's variety.
        likely = langcodes.Language.get(tag).maximize().script
        exact = [c for c in candidates if c == f"{iso3}_{likely}"]
        paper_codes = {entry["flores"] for entry in paper_languages()}
        preferred = [c for c in candidates if c in paper_codes]
        if exact:
            candidates = exact
        elif len(preferred) == 1:
            candidates = preferred
        else:
            candidates = _standard_variety(tag, candidates)
    if len(candidates) > 1:
        listed = ", ".join(f"{_make(c[:3], c[4:], c).name} ({c})" for c in candidates)
        raise LanguageError(f"ambiguous language {raw!r}: it could be {listed}; give one of those")
    if candidates:
        code = candidates[0]
        return _make(code[:3], code[4:], code)
    script = langcodes.Language.get(tag).maximize().script or "Latn"
    return _make(iso3, script, f"{iso3}_{script}")


def resolve_many(items: list[str], data_dir: Path | None = None) -> list[Language]:
    """Resolve a batch; empty lists and the same language given twice are errors."""
    cleaned = [i for i in (s.strip() for s in items) if i]
    if not cleaned:
        raise LanguageError("no languages given: name at least one, e.g. --languages 'Welsh'")
    resolved: list[Language] = []
    seen: dict[str, str] = {}
    errors: list[str] = []
    for item in cleaned:
        try:
            lang = resolve(item, data_dir)
        except LanguageError as exc:
            errors.append(str(exc))
            continue
        if lang.flores_code in seen:
            errors.append(
                f"duplicate language: {item!r} and {seen[lang.flores_code]!r} are both "
                f"{lang.name} ({lang.flores_code})"
            )
            continue
        seen[lang.flores_code] = item
        resolved.append(lang)
    if errors:
        raise LanguageError("\n".join(errors))
    return resolved


def parse_language_list(value: str) -> list[str]:
    """`--languages` value: comma-separated names/codes, or @file / a path to a file of them."""
    path = Path(value.removeprefix("@"))
    if value.startswith("@") or (path.suffix in {".txt", ".yaml", ".yml"} and path.is_file()):
        if not path.is_file():
            raise LanguageError(f"language list file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
            entries = data.get("languages", []) if isinstance(data, dict) else data
            return [e["code"] if isinstance(e, dict) else str(e) for e in entries or []]
        return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]
    return [v.strip() for v in value.split(",") if v.strip()]


def paper54(data_dir: Path | None = None) -> list[Language]:
    return [resolve(entry["code"], data_dir) for entry in paper_languages()]


def coverage(lang: Language, data_dir: Path | None = None) -> dict[str, bool | None]:
    """Which evaluation sets cover a language (None: could not be determined offline)."""
    sib = sib200_codes(data_dir)
    bele = belebele_codes()
    gmmlu = global_mmlu_codes()
    macro = MACROLANGUAGES.get(langcodes.Language.get(lang.iso639_3).language or "")
    mmlu_keys = {lang.iso639_3} | ({_iso3(macro)} if macro else set())
    return {
        "flores200": lang.flores_code in flores_codes(data_dir),
        "sib200": None if sib is None else lang.flores_code in sib,
        "belebele": None if bele is None else lang.flores_code in bele,
        "global_mmlu": None if gmmlu is None else bool(mmlu_keys & gmmlu),
    }
