import pytest

from kakugo.languages import (
    LanguageError,
    coverage,
    flores_codes,
    paper54,
    paper_languages,
    parse_language_list,
    resolve,
    resolve_many,
)


@pytest.mark.parametrize(
    "text, flores",
    [
        ("Scottish Gaelic", "gla_Latn"),
        ("gd", "gla_Latn"),
        ("gla", "gla_Latn"),
        ("cym_Latn", "cym_Latn"),
        ("Gàidhlig", "gla_Latn"),       # endonym
        ("Cymraeg", "cym_Latn"),        # endonym
        ("  Welsh ", "cym_Latn"),
        ("Kinyarwanda", "kin_Latn"),
        ("rw", "kin_Latn"),
        ("Swahili", "swh_Latn"),        # macrolanguage with one FLORES member
        ("Azerbaijani", "azj_Latn"),    # macrolanguage: the paper's variety
        ("Central Kurdish", "ckb_Arab"),
        ("Chinese", "zho_Hans"),        # likely script
        ("Latvian", "lvs_Latn"),        # macrolanguage: its standard variety ...
        ("lv", "lvs_Latn"),
        ("Malay", "zsm_Latn"),          # ... when no other member has the same name
        ("Latgalian", "ltg_Latn"),
    ],
)
def test_resolve(text, flores, data_dir):
    assert resolve(text, data_dir).flores_code == flores


def test_resolved_fields(data_dir):
    lang = resolve("Scottish Gaelic", data_dir)
    assert (lang.iso639_3, lang.script, lang.name, lang.autonym) == (
        "gla", "Latn", "Scottish Gaelic", "Gàidhlig")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Kurdish", ("ambiguous language 'Kurdish': it could be Central Kurdish (ckb_Arab), "
                    "Northern Kurdish (kmr_Latn)")),
        ("Arabic", "Standard Arabic (arb_Arab)"),  # Tunisian Arabic, ... as well
        ("Norwegian", ("ambiguous language 'Norwegian': it could be Norwegian Nynorsk "
                       "(nno_Latn), Norwegian Bokmål (nob_Latn)")),
        ("Gaelic", "no language has exactly that name; closest match: Scottish Gaelic"),
        ("Klingonx", "unknown language 'Klingonx'"),
        ("Foobarish", "unknown language 'Foobarish'"),
        ("zz", "unknown language 'zz'"),
        ("qqq_Latn", "'qqq' is not an ISO 639-3 code"),
        ("", "empty language name"),
    ],
)
def test_bad_names_fail_with_candidates(text, fragment, data_dir):
    with pytest.raises(LanguageError) as info:
        resolve(text, data_dir)
    assert fragment in str(info.value)


def test_batch_rejects_duplicates_and_empty(data_dir):
    with pytest.raises(LanguageError, match="duplicate language: 'gd' and 'Scottish Gaelic'"):
        resolve_many(["Scottish Gaelic", "gd"], data_dir)
    with pytest.raises(LanguageError, match="no languages given"):
        resolve_many([" ", ""], data_dir)
    both = resolve_many(["Welsh", "yo"], data_dir)
    assert [l.flores_code for l in both] == ["cym_Latn", "yor_Latn"]


def test_batch_reports_every_bad_entry(data_dir):
    with pytest.raises(LanguageError) as info:
        resolve_many(["Kurdish", "Welsh", "Foobarish"], data_dir)
    assert "Kurdish" in str(info.value) and "Foobarish" in str(info.value)


def test_paper_54_all_resolve_to_distinct_flores_codes(data_dir):
    langs = paper54(data_dir)
    assert len(paper_languages()) == 54
    assert len({l.flores_code for l in langs}) == 54
    by_code = {e["code"]: l for e, l in zip(paper_languages(), langs, strict=True)}
    assert by_code["rw"].flores_code == "kin_Latn"
    assert by_code["sdh"].iso639_3 == "sdh" and by_code["sdh"].flores_code == "ckb_Arab"
    assert by_code["mg"].flores_code == "plt_Latn"
    # every paper language resolves the same from its code as from its name
    for lang in langs:
        assert resolve(lang.flores_code, data_dir).flores_code == lang.flores_code


def test_coverage_is_read_from_the_data(data_dir):
    flores = flores_codes(data_dir)
    assert "gla_Latn" in flores and "chv_Cyrl" not in flores
    gd = coverage(resolve("gd", data_dir), data_dir)
    assert gd == {"flores200": True, "sib200": True, "belebele": False, "global_mmlu": False}
    yo = coverage(resolve("yo", data_dir), data_dir)
    assert yo == {"flores200": True, "sib200": True, "belebele": True, "global_mmlu": True}
    cv = coverage(resolve("cv", data_dir), data_dir)
    assert cv["flores200"] is False and cv["sib200"] is False
    # Global-MMLU lists Swahili by its macrolanguage code
    assert coverage(resolve("Swahili", data_dir), data_dir)["global_mmlu"] is True


def test_language_list_input(tmp_path):
    assert parse_language_list("Scottish Gaelic, Welsh,yo") == ["Scottish Gaelic", "Welsh", "yo"]
    f = tmp_path / "batch.txt"
    f.write_text("# batch 1\nWelsh\n\nyo  # Yoruba\n")
    assert parse_language_list(f"@{f}") == ["Welsh", "yo"]
    assert parse_language_list(str(f)) == ["Welsh", "yo"]
    with pytest.raises(LanguageError, match="does not exist"):
        parse_language_list(f"@{tmp_path / 'nope.txt'}")
