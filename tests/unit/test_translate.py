import json

import pytest

from kakugo.config import TranslationConfig, load_config
from kakugo.dataset.filters import check_translation
from kakugo.generate.translate import (
    EMBEDDED_SOURCE,
    TranslationSourceError,
    conversation_schema,
    load_source,
    to_turns,
    translation_requests,
)

SOURCE = [{"role": "user", "content": "How are you today?"},
          {"role": "assistant", "content": "I am fine, thank you."}]
CFG = TranslationConfig(source="x.jsonl", min_token_ratio=0.75, max_token_ratio=25)


def words(text: str) -> int:
    return len(text.split())


def check(reply, source=SOURCE, finished=True):
    return check_translation(source, reply if isinstance(reply, str) else json.dumps(reply),
                             finished=finished, count_tokens=words, cfg=CFG)


GOOD = {"turns": [{"role": "user", "content": "Ciamar a tha thu an-diugh?"},
                  {"role": "assistant", "content": "Tha gu math, tapadh leat."}]}


def test_a_good_translation_is_kept():
    turns, rule, detail = check(GOOD)
    assert (rule, detail) == ("", "") and turns == GOOD["turns"]


@pytest.mark.parametrize("reply, finished, rule", [
    (GOOD, False, "unfinished"),
    ('{"turns": [{"role": "user", "content": "x"', True, "parse"),
    ({"items": []}, True, "parse"),
    ({"turns": [{"role": "user", "content": "a b c d", "extra": 1},
                {"role": "assistant", "content": "a b c d"}]}, True, "fields"),
    ({"turns": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, True, "fields"),
    ({"turns": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     True, "fields"),
    ({"turns": [{"role": "assistant", "content": "a b c d"},
                {"role": "user", "content": "a b c d e"}]}, True, "roles"),
    ({"turns": [{"role": "user", "content": "a b c d"},
                {"role": "user", "content": "a b c d e"}]}, True, "roles"),
    (('{"turns": [{"role": "user", "content": "\\ud800 b c d"}, '
     '{"role": "assistant", "content": "a b c d e"}]}'), True, "utf8"),
    ({"turns": [{"role": "user", "content": "a b c d"}]}, True, "turn_count"),
    ({"turns": [{"role": "user", "content": "a"},
                {"role": "assistant", "content": "a b c d e"}]}, True, "token_ratio"),
    ({"turns": [{"role": "user", "content": "a b c d"},
                {"role": "assistant", "content": " ".join(["w"] * 200)}]}, True, "token_ratio"),
])
def test_each_translation_rule_rejects_its_case(reply, finished, rule):
    turns, got, detail = check(reply, finished=finished)
    assert got == rule and turns == [] and detail


def test_the_ratio_bounds_come_from_the_config():
    reply = {"turns": [{"role": "user", "content": "a b c d"},
                       {"role": "assistant", "content": " ".join(["w"] * 30)}]}
    strict = TranslationConfig(source="x.jsonl", max_token_ratio=4)
    assert check_translation(SOURCE, json.dumps(reply), finished=True, count_tokens=words,
                             cfg=strict)[1] == "token_ratio"
    assert check(reply)[1] == ""


def test_source_shapes_are_read_and_wrong_ones_refused():
    sharegpt = {"conversations": [{"from": "system", "value": "s"},
                                  {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert to_turns(sharegpt, "row 1") == [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}]
    assert to_turns({"messages": SOURCE}, "row 1") == SOURCE
    with pytest.raises(TranslationSourceError, match="row 7: expected a 'conversations'"):
        to_turns({"text": "x"}, "row 7")
    with pytest.raises(TranslationSourceError, match="needs 'from' and 'value'"):
        to_turns({"conversations": [{"role": "user"}]}, "row 2")


def test_local_source_is_english_only_shuffled_by_seed_and_token_bounded(tmp_path):
    lines = [{"conversations": [{"from": "human", "value": f"question {i}"},
                                {"from": "gpt", "value": "answer " * (i + 1)}],
              "langdetect": "en" if i != 3 else "zh"} for i in range(10)]
    path = tmp_path / "src.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    cfg = TranslationConfig(source=str(path), rows=20, max_source_tokens=8)
    rows = load_source(cfg, seed=1, count_tokens=words)
    contents = [r["turns"][0]["content"] for r in rows]
    # row 3 is not English; rows 6..9 have more than 8 words
    assert sorted(contents) == [f"question {i}" for i in (0, 1, 2, 4, 5)]
    assert contents == [r["turns"][0]["content"] for r in load_source(cfg, 1, words)]
    assert contents != [r["turns"][0]["content"] for r in load_source(cfg, 2, words)]
    assert len(load_source(cfg.model_copy(update={"rows": 2}), 1, words)) == 2
    assert len({r["source_id"] for r in rows}) == len(rows)


def test_bad_local_sources_are_refused(tmp_path):
    with pytest.raises(TranslationSourceError, match="does not exist"):
        load_source(TranslationConfig(source=str(tmp_path / "none.jsonl")), 0, words)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\nnot json\n')
    with pytest.raises(TranslationSourceError, match="line 2: not a JSON object"):
        load_source(TranslationConfig(source=str(bad)), 0, words)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"prompt": "x"}\n')
    with pytest.raises(TranslationSourceError, match="row 1: expected"):
        load_source(TranslationConfig(source=str(wrong)), 0, words)


def test_embedded_source_and_requests_carry_the_count_exact_schema():
    rows = load_source(TranslationConfig(source=EMBEDDED_SOURCE, rows=100), 0, words)
    assert len(rows) == 20 and any(len(r["turns"]) == 4 for r in rows)
    config = load_config(None, ["translation.max_tokens=300"])
    requests = list(translation_requests("gla_Latn", "Scottish Gaelic", rows, config))
    four = next(r for r in requests if len(json.loads(r["item"])) == 4)
    schema = json.loads(four["schema"])
    assert schema == conversation_schema(4)
    assert schema["properties"]["turns"]["minItems"] == 4 == schema["properties"]["turns"]["maxItems"]
    assert four["max_tokens"] == 300 and four["category"] == "translation"
    assert "Scottish Gaelic" in four["user"] and "Scottish Gaelic" in four["system"]
    assert len({r["id"] for r in requests}) == len(requests)


def test_a_dataset_source_is_sampled_uniformly_by_index_with_the_seed(tmp_path):
    """A folder of parquet files loaded as the hub's datasets are (`load_dataset`, random
    access by index): the sample covers the whole set, not its first rows, is the same for
    the same seed and skips non-English and too-long rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "english-set"
    folder.mkdir()
    for part in range(4):  # 4 files of 250 rows; a stream would start with part 0
        rows = []
        for i in range(part * 250, (part + 1) * 250):
            rows.append({"conversations": [
                {"from": "human", "value": f"question {i}" + (" long" * 50 if i % 7 == 0 else "")},
                {"from": "gpt", "value": f"answer {i}"}],
                "langdetect": "zh" if i % 11 == 0 else "en"})
        pq.write_table(pa.Table.from_pylist(rows), folder / f"train-{part:05d}.parquet")
    cfg = TranslationConfig(source=str(folder), subset=None, split="train", rows=60,
                            max_source_tokens=20)
    sample = load_source(cfg, seed=3, count_tokens=words)
    indices = [r["source_index"] for r in sample]
    assert len(indices) == len(set(indices)) == 60
    assert all(i % 7 and i % 11 for i in indices)  # English and within the token limit
    assert [sum(250 * p <= i < 250 * (p + 1) for i in indices) for p in range(4)] == \
        [pytest.approx(15, abs=9)] * 4  # every file contributes, about a quarter each
    assert indices == [r["source_index"] for r in load_source(cfg, 3, words)]
    assert indices != [r["source_index"] for r in load_source(cfg, 4, words)]
    assert sample[0]["turns"][0]["content"] == f"question {indices[0]}"


def test_seeded_order_is_a_permutation_drawn_lazily():
    from kakugo.generate.translate import seeded_order

    order = list(seeded_order(1000, seed=5))
    assert sorted(order) == list(range(1000)) and order[:10] != list(range(10))
    assert order == list(seeded_order(1000, seed=5))
    assert list(seeded_order(0, seed=5)) == []


def test_an_unloadable_dataset_source_says_which_and_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = TranslationConfig(source="no-such-org/no-such-set", subset="7M_core", rows=5)
    with pytest.raises(TranslationSourceError, match="no-such-org/no-such-set .*subset 7M_core"):
        load_source(cfg, 0, words)
