import json

import pytest

from kakugo.config import FiltersConfig, load_config
from kakugo.dataset.card import llamafactory_info
from kakugo.dataset.filters import (
    ContaminationIndex,
    FilterSetupError,
    LanguageIdentifier,
    basic_verdict,
    duplicates,
    empty_verdict,
    lid_model_path,
)
from kakugo.dataset.stage import (
    CANDIDATE_COLUMNS,
    dedup_language,
    failing,
    judge,
    reject_rule,
)
from kakugo.dataset.writer import sft_messages
from kakugo.languages import resolve


@pytest.fixture(scope="module")
def lid():
    return LanguageIdentifier("embedded:lid176")


@pytest.mark.parametrize("prompt, response, finish, error, verdict, empty", [
    ("Hello?", "Hi.", "stop", "", "ok", "ok"),
    ("Hello?", "Hi.", "length", "", "unfinished", "ok"),
    ("Hello?", "Hi.", "abort", "", "unfinished", "ok"),  # only "stop" is finished
    ("Hello?", "Hi.", "error", "engine died", "engine_error", "ok"),
    ("  ", "Hi.", "stop", "", "ok", "empty_prompt"),  # a string: the paper keeps it
    (None, "Hi.", "stop", "", "not_a_string", "empty_prompt"),
    ("Hello?", "", "stop", "", "ok", "empty_response"),
    ("Describe <image> please", "It is a cat.", "stop", "", "media_placeholder", "ok"),
    ("What is in [video 2]?", "A dog.", "stop", "", "media_placeholder", "ok"),
    ("Play <|audio|>", "Done.", "stop", "", "media_placeholder", "ok"),
    ("Is an image worth a thousand words?", "Often, yes.", "stop", "", "ok", "ok"),
])
def test_basic_filter_is_the_papers_and_empty_rows_are_ours(prompt, response, finish, error,
                                                            verdict, empty):
    assert basic_verdict(prompt, response, finish, error) == verdict
    assert empty_verdict(prompt, response) == empty


def test_dedup_finds_exact_and_near_duplicates_but_keeps_distinct_prompts():
    rows = [("a", "How do I cook rice on a gas stove without burning it?"),
            ("b", "how do I cook rice on a gas stove without burning it"),   # exact after norm.
            ("c", "How do I cook rice on a gas stove without burning it at all?"),  # near
            ("d", "What is the capital of Scotland and how big is it?")]
    found = duplicates(rows, threshold=0.7)
    assert found == {"b": "a", "c": "a"}
    assert duplicates(rows, threshold=1.0) == {"b": "a"}  # exact only


def test_lid_judges_real_flores_sentences(lid, data_dir):
    cy = resolve("cy", data_dir)
    devtest = data_dir / "flores200" / "devtest"
    gaelic = (devtest / "gla_Latn.devtest").read_text().splitlines()[:100]
    assert sum(lid.detect(line)[0][0] == "gla" for line in gaelic) >= 80
    welsh = (devtest / "cym_Latn.devtest").read_text().splitlines()[:100]
    assert [lid.verdict([line], cy, 0.5)[0] for line in welsh].count("ok") >= 85
    english = (data_dir / "flores200" / "devtest" / "eng_Latn.devtest").read_text().splitlines()
    verdict, confidence = lid.verdict([english[0]], cy, 0.5)
    assert verdict == "wrong:eng" and confidence < 0.5
    # no mass at all on the language is 0.0, a float like every other confidence: a block
    # of such rows must have the column type of the others (Ray's shuffle concatenates them)
    none = lid.verdict(["The weather is nice today and I am going out."], cy, 0.5)[1]
    assert none == 0 and isinstance(none, float)


def test_lid_passes_languages_it_cannot_judge_as_unknown(lid, data_dir):
    zulu = resolve("zu", data_dir)
    assert not lid.covers(zulu)
    assert lid.verdict(["Sawubona, unjani?"], zulu, 0.5) == ("unknown", 0.0)
    # a macrolanguage label counts for its members (lid.176 says 'ku' for Kurmanji)
    assert lid.covers(resolve("kmr", data_dir)) and lid.covers(resolve("arz", data_dir))


def test_lid_model_sources(tmp_path, monkeypatch):
    assert lid_model_path("embedded:lid176").endswith("lid.176.ftz")
    with pytest.raises(FilterSetupError, match="does not exist"):
        lid_model_path(str(tmp_path / "none.bin"))
    with pytest.raises(FilterSetupError, match="expected hf:OWNER/REPO/FILE"):
        lid_model_path("hf:model.bin")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FilterSetupError, match="cannot fetch it"):
        lid_model_path("hf:cis-lmu/glotlid/model.bin")


def test_lid_model_from_the_hub_cache_is_used_offline(tmp_path, monkeypatch):
    """A hub model already in the local cache loads with no network (HF's offline mode)."""
    snapshot = tmp_path / "hub" / "models--cis-lmu--glotlid" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.bin").symlink_to(lid_model_path("embedded:lid176"))
    (tmp_path / "hub" / "models--cis-lmu--glotlid" / "refs").mkdir()
    (tmp_path / "hub" / "models--cis-lmu--glotlid" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert LanguageIdentifier("hf:cis-lmu/glotlid/model.bin").detect("Good morning to you")[0][0] \
        == "eng"


def test_decontamination_matches_eval_sentences_only(data_dir, tmp_path):
    gd = resolve("gd", data_dir)
    index = ContaminationIndex(gd, data_dir, 13)
    assert index.counts["flores200/devtest"] == 1012
    sentence = (data_dir / "flores200" / "devtest" / "gla_Latn.devtest").read_text().splitlines()[5]
    assert index.match(f"Leugh seo: {sentence} Dè tha e a' ciallachadh?") is not None
    assert index.match("Tha mi a' dol dhachaigh a-nis oir tha an t-acras orm.") is None
    # Lao is in Belebele too: a local copy of it (one passage) stands in for the hub's
    data = tmp_path / "data"
    (data / "belebele").mkdir(parents=True)
    for name in ("flores200", "sib200"):
        (data / name).symlink_to(data_dir / name)
    lao = resolve("lo", data)  # no spaces between words: character n-grams
    lines = (data_dir / "flores200" / "devtest" / "lao_Laoo.devtest").read_text().splitlines()
    (data / "belebele" / "lao_Laoo.jsonl").write_text(json.dumps(
        {"flores_passage": lines[7], "question": "?"}, ensure_ascii=False) + "\n")
    index = ContaminationIndex(lao, data, 13)
    assert index.match(lines[3][5:60]) is not None
    assert index.where == {"flores200": "local", "sib200": "local", "belebele": "local"}


def _candidate(**values):
    row = {c: "" for c in CANDIDATE_COLUMNS} | {"language_id_confidence": 0.0, "revised": False}
    return row | values


def test_judge_sets_each_verdict(lid, data_dir):
    gd = resolve("gd", data_dir)
    sentence = (data_dir / "flores200" / "devtest" / "gla_Latn.devtest").read_text().splitlines()[9]
    filters = FiltersConfig(language_id_model="embedded:lid176")
    row = judge(_candidate(kind="generated", prompt=sentence, response="Tha, gu dearbh.",
                           finish_reason="stop"), gd, filters, lid, data_dir)
    assert row["basic"] == "ok" and row["decontamination"].startswith("matches flores200")
    english = judge(_candidate(kind="generated", prompt="What time is it in Glasgow now?",
                               response="It is half past three in the afternoon.",
                               finish_reason="stop"), gd, filters, lid, data_dir)
    assert english["language_id"] == "wrong:eng" and english["decontamination"] == "ok"
    off = FiltersConfig(language_id="off", decontamination="off", basic="off", empty="off")
    untouched = judge(_candidate(kind="generated", prompt="x", response="",
                                 finish_reason="length"), gd, off, None, data_dir)
    assert (untouched["basic"], untouched["empty"], untouched["language_id"],
            untouched["decontamination"]) == ("", "", "", "")


def test_language_id_judges_each_side_by_the_language_its_task_expects(lid, data_dir):
    """Real FLORES sentences: a context prompt in Scottish Gaelic that asks for a
    translation is answered in English (its aligned FLORES sentence) and kept; the same
    answer to any other prompt is the wrong language; a prompt in English is wrong
    whatever the task."""
    gd = resolve("gd", data_dir)
    devtest = data_dir / "flores200" / "devtest"
    gaelic = (devtest / "gla_Latn.devtest").read_text().splitlines()
    english = (devtest / "eng_Latn.devtest").read_text().splitlines()
    filters = FiltersConfig(language_id_model="embedded:lid176", decontamination="off")
    # sentences lid.176 places in Scottish Gaelic with confidence (it is unsure of many:
    # those get "uncertain:gla")
    sure = [i for i in range(100) if lid.confidence(gaelic[i], gd) >= 0.6][:3]
    assert len(sure) == 3
    assert lid.verdict([gaelic[20]], gd, 0.5)[0] == "uncertain:gla"
    for i in sure:
        prompt = f"{gaelic[i]}\n\n{gaelic[i + 1]}"  # a context text and a request
        translate = judge(_candidate(kind="generated", task="translate", prompt=prompt,
                                     response=english[i], finish_reason="stop"),
                          gd, filters, lid, data_dir)
        assert translate["language_id"] == "ok", (i, translate["language_id_confidence"])
        other = judge(_candidate(kind="generated", task="qa", prompt=prompt,
                                 response=english[i], finish_reason="stop"),
                      gd, filters, lid, data_dir)
        assert other["language_id"] == "wrong:eng"
        asked_in_english = judge(_candidate(kind="generated", task="translate",
                                            prompt=english[i + 1], response=gaelic[i],
                                            finish_reason="stop"), gd, filters, lid, data_dir)
        assert asked_in_english["language_id"] == "wrong:eng"


def test_actions_decide_what_is_dropped_and_dedup_skips_dropped_rows():
    import pandas as pd

    rows = [_candidate(id="1", kind="generated", prompt="Same question here?", basic="ok",
                       translation="", language_id="wrong:eng"),
            _candidate(id="2", kind="generated", prompt="Same question here?", basic="ok",
                       language_id="ok"),
            _candidate(id="3", kind="generated", prompt="Same question here?", basic="ok",
                       language_id="ok"),
            _candidate(id="4", kind="translated", prompt="", basic="empty_prompt",
                       translation="roles: turn 0 has role 'assistant'")]
    drop = FiltersConfig()
    out = dedup_language(pd.DataFrame(rows), drop).set_index("id")["reject"].to_dict()
    # row 1 is dropped for its language, so row 2 is the first of the duplicates
    assert out == {"1": "language_id: wrong:eng", "2": "", "3": "dedup: duplicate of 2",
                   "4": "translation: roles: turn 0 has role 'assistant'"}
    annotate = FiltersConfig(language_id="annotate")
    out = dedup_language(pd.DataFrame(rows), annotate).set_index("id")["reject"].to_dict()
    assert out["1"] == "" and out["2"] == "dedup: duplicate of 1"
    assert failing(_candidate(basic="unfinished"), FiltersConfig(basic="annotate"),
                   ("basic",)) == ""
    assert [reject_rule(r) for r in out.values() if r] == ["dedup/duplicate", "dedup/duplicate",
                                                          "translation/roles"]
    assert reject_rule("decontamination: matches flores200/devtest") == "decontamination/flores200"
    assert reject_rule("language_id: wrong:eng") == "language_id/wrong"


def test_sft_rows_follow_the_paper_format():
    config = load_config(None, [])
    generated = _candidate(kind="generated", prompt="Q?", response="A.", reasoning="think")
    messages = sft_messages(generated, config)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == config.dataset.think_system_prompt
    assert messages[2]["content"] == "<think>\nthink\n</think>\n\nA."
    limited = sft_messages(generated, config, trace=False)  # the token-limited variant's
    assert limited[2]["content"] == "A." and limited[0]["content"] == "Answer concisely."
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    translated = sft_messages(_candidate(kind="translated", turns=json.dumps(turns)), config)
    assert translated == [{"role": "system", "content": "Answer concisely."}, *turns]


def test_llamafactory_entry(data_dir):
    info = llamafactory_info(resolve("gd", data_dir))
    assert info == {"kakugo_gd": {
        "file_name": "data", "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}}}


def test_token_budget_takes_answers_first_then_traces_in_a_seeded_order():
    from kakugo.dataset.writer import budget_plan

    rows = [(f"r{i}", 10, 30) for i in range(10)] + [("t0", 12, 0), ("t1", 12, 0)]
    everything = sum(a + x for _, a, x in rows)
    plan, used = budget_plan(rows, everything, seed=0)
    assert used == everything and all(plan[r] for r, _, x in rows if x)
    # room for every answer and two traces: no row is left out for a trace
    plan, used = budget_plan(rows, 124 + 60, seed=0)
    assert len(plan) == 12 and sum(plan.values()) == 2 and used == 184
    assert plan == budget_plan(rows, 184, seed=0)[0]  # the same rows for the same seed
    others = [budget_plan(rows, 184, seed=s)[0] for s in range(1, 6)]
    assert any(o != plan for o in others)  # another seed, other traces
    # not even every answer fits: rows are left out, none has a trace
    plan, used = budget_plan(rows, 55, seed=0)
    assert len(plan) == 5 and not any(plan.values()) and used <= 55


def _hub_like_dataset(folder, code: str, splits: dict[str, list[dict]]) -> str:
    """A local dataset folder laid out as the hub's evaluation datasets are: one config
    per language (README metadata), one file per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = []
    for split, rows in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / split / f"{code}.parquet")
        files.append(f"  - split: {split}\n    path: {split}/{code}.parquet")
    (folder / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {code}\n  data_files:\n" + "\n".join(files) + "\n---\n")
    return str(folder)


def test_decontamination_reads_the_hub_datasets_without_a_local_copy(tmp_path, monkeypatch,
                                                                       data_dir):
    """The hub loading code on local stand-ins of FLORES+, SIB-200 and Belebele (real
    Yoruba sentences); without them, and offline, it refuses to run instead of passing."""
    from kakugo import languages
    from kakugo.dataset.filters import eval_texts

    yo = resolve("yo", data_dir)
    flores = (data_dir / "flores200" / "devtest" / "yor_Latn.devtest").read_text().splitlines()
    sib = (data_dir / "sib200" / "yor_Latn" / "test.tsv").read_text().splitlines()[1:]
    sib_texts = [line.split("\t")[2] for line in sib]
    hub = {
        "flores200": _hub_like_dataset(tmp_path / "flores", "yor_Latn", {
            "dev": [{"text": t} for t in flores[:10]],
            "devtest": [{"text": t} for t in flores[10:30]]}),
        "sib200": _hub_like_dataset(tmp_path / "sib", "yor_Latn", {
            split: [{"text": t, "category": "science"} for t in sib_texts[i * 5:(i + 1) * 5]]
            for i, split in enumerate(("train", "validation", "test"))}),
        "belebele": _hub_like_dataset(tmp_path / "belebele", "yor_Latn", {
            "test": [{"flores_passage": flores[40], "question": "Kí ni?"}]}),
    }
    monkeypatch.setattr(languages, "EVAL_HUB_DATASETS", {**languages.EVAL_HUB_DATASETS, **hub})
    languages.sib200_codes.cache_clear()
    texts, where = eval_texts(yo, None)
    assert where == {"flores200": "hub", "sib200": "hub", "belebele": "hub"}
    by_source = {}
    for source, text in texts:
        by_source.setdefault(source, []).append(text)
    assert len(by_source["flores200/dev"]) == 10 and len(by_source["flores200/devtest"]) == 20
    assert by_source["sib200/validation"] == sib_texts[5:10]
    assert by_source["belebele/test"] == [flores[40], "Kí ni?"]
    index = ContaminationIndex(yo, None, 13)
    assert index.match(f"Ka èyí: {flores[15]}") == "flores200/devtest"
    # the local copy wins where there is one; a set that does not cover the language is
    # skipped and says so
    assert eval_texts(resolve("gd", data_dir), data_dir)[1] == {
        "flores200": "local", "sib200": "local", "belebele": "not covered"}
    monkeypatch.setattr(languages, "EVAL_HUB_DATASETS", {
        **languages.EVAL_HUB_DATASETS, "belebele": str(tmp_path / "missing")})
    with pytest.raises(FilterSetupError, match="decontamination of yor_Latn needs the "
                       "belebele texts.*filters.decontamination: off"):
        eval_texts(yo, None)
