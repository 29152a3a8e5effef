import json

import pytest

from kakugo.config import FiltersConfig, load_config
from kakugo.generate.assemble import (
    CANDIDATE_COLUMNS,
    dedup_language,
    failing,
    judge,
    llamafactory_info,
    reject_rule,
    sft_messages,
)
from kakugo.generate.filters import (
    ContaminationIndex,
    FilterSetupError,
    LanguageIdentifier,
    basic_verdict,
    duplicates,
    lid_model_path,
)
from kakugo.languages import resolve


@pytest.fixture(scope="module")
def lid():
    return LanguageIdentifier("embedded:lid176")


@pytest.mark.parametrize("prompt, response, finish, error, verdict", [
    ("Hello?", "Hi.", "stop", "", "ok"),
    ("Hello?", "Hi.", "length", "", "unfinished"),
    ("Hello?", "Hi.", "error", "engine died", "engine_error"),
    ("  ", "Hi.", "stop", "", "empty_prompt"),
    (None, "Hi.", "stop", "", "empty_prompt"),
    ("Hello?", "", "stop", "", "empty_response"),
    ("Describe <image> please", "It is a cat.", "stop", "", "media_placeholder"),
    ("What is in [video 2]?", "A dog.", "stop", "", "media_placeholder"),
    ("Play <|audio|>", "Done.", "stop", "", "media_placeholder"),
    ("Is an image worth a thousand words?", "Often, yes.", "stop", "", "ok"),
])
def test_basic_filter(prompt, response, finish, error, verdict):
    assert basic_verdict(prompt, response, finish, error) == verdict


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


def test_decontamination_matches_eval_sentences_only(data_dir):
    gd = resolve("gd", data_dir)
    index = ContaminationIndex(gd, data_dir, 13)
    assert index.counts["flores200/devtest"] == 1012
    sentence = (data_dir / "flores200" / "devtest" / "gla_Latn.devtest").read_text().splitlines()[5]
    assert index.match(f"Leugh seo: {sentence} Dè tha e a' ciallachadh?") is not None
    assert index.match("Tha mi a' dol dhachaigh a-nis oir tha an t-acras orm.") is None
    lao = resolve("lo", data_dir)  # no spaces between words: character n-grams
    text = (data_dir / "flores200" / "devtest" / "lao_Laoo.devtest").read_text().splitlines()[3]
    assert ContaminationIndex(lao, data_dir, 13).match(text[5:60]) is not None


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
    off = FiltersConfig(language_id="off", decontamination="off", basic="off")
    untouched = judge(_candidate(kind="generated", prompt="x", response="y",
                                 finish_reason="length"), gd, off, None, data_dir)
    assert (untouched["basic"], untouched["language_id"], untouched["decontamination"]) == \
        ("", "", "")


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
    limited = sft_messages(generated, load_config(None, ["dataset.token_limited=true"]))
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
