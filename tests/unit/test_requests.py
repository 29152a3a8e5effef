"""Request building for generation: counts follow the config's arithmetic, ids are stable."""

from pathlib import Path

from kakugo.config import load_config
from kakugo.generate.requests import (
    child_requests,
    context_requests,
    prompts_per_topic,
    seed_requests,
    topic_prompt_requests,
)

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"


def test_seed_requests_follow_the_paper_counts():
    config = load_config(PAPER)
    rows = seed_requests("gla_Latn", "Scottish Gaelic", config)
    macro = [r for r in rows if r["step"] == "macro_topics"]
    broad = [r for r in rows if r["step"] == "broad_scenarios"]
    assert len(macro) == 16 and {r["n"] for r in macro} == {20}
    assert sum(r["specific"] for r in macro) == 8
    assert any("Scottish Gaelic culture" in r["item"] for r in macro)
    assert len(broad) == 2 and {r["n"] for r in broad} == {30}
    assert len({r["id"] for r in rows}) == len(rows)
    assert seed_requests("gla_Latn", "Scottish Gaelic", config) == rows  # stable


def test_children_and_paper_upper_bounds():
    config = load_config(PAPER)
    rows = seed_requests("gla_Latn", "Scottish Gaelic", config)
    macro = next(r for r in rows if r["step"] == "macro_topics")
    topics = list(child_requests(macro, [f"m{i}" for i in range(20)], config))
    assert len(topics) == 20 and {r["step"] for r in topics} == {"topics"}
    assert {r["parent_id"] for r in topics} == {macro["id"]}
    broad = next(r for r in rows if r["step"] == "broad_scenarios")
    kids = list(child_requests(broad, [f"b{i}" for i in range(30)], config))
    # every broad scenario gets prompts of its own and 30 detailed scenarios
    assert sum(r["step"] == "scenario_prompts" for r in kids) == 30
    assert sum(r["step"] == "detailed_scenarios" for r in kids) == 30
    detailed = next(r for r in kids if r["step"] == "detailed_scenarios")
    leaves = list(child_requests(detailed, [f"d{i}" for i in range(30)], config))
    assert [r["step"] for r in leaves] == ["scenario_prompts"] * 30
    assert {r["n"] for r in leaves} == {5}
    # (60 broad + 1,800 detailed) x 5 = 9,300 scenario prompts at most
    assert (2 * 30 + 2 * 30 * 30) * 5 == 9300


def test_topic_union_is_deduplicated_and_prompt_counts_stay_in_range():
    config = load_config(PAPER)
    base = {"language": "gla_Latn", "language_name": "Scottish Gaelic", "seed": "health",
            "specific": False, "system": "s"}
    items = [{**base, "id": f"i{i}", "item": t} for i, t in
             enumerate(["Food", "food ", "Sleep", "  ", "Sport", "FOOD"])]
    rows = list(topic_prompt_requests(items, config))
    assert [r["item"] for r in rows] == ["Food", "Sleep", "Sport"]
    counts = [prompts_per_topic(f"x{i}", config) for i in range(300)]
    assert set(counts) == {1, 2, 3}
    assert all(r["n"] == prompts_per_topic(r["parent_id"], config) for r in rows)
    # the paper's union bound: 16 seeds x (1 + 20 + 200) items
    assert 16 * (1 + 20 + 20 * 10) == 3536


def test_context_tasks_cycle_with_qa_weighted_half():
    config = load_config(PAPER)
    rows = list(context_requests("gla_Latn", "Scottish Gaelic",
                                 [f"text {i}" for i in range(80)], config))
    tasks = [r["seed"] for r in rows]
    assert tasks.count("qa") == 40
    assert {t for t in tasks} == {"translate", "summarize", "improve", "classify", "qa"}
    assert all(r["n"] == 3 and "text" in r["user"] for r in rows)
