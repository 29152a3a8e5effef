"""An empty block of a stage's table has the types of a full one, as Ray converts both for
its hash shuffle (which takes a map task's schema from its first block and cannot
concatenate null columns with typed ones: a batch of 8 languages of the paper's recipe
failed so at the prompts step, benchmarks/scaling.py --paper-scale)."""

import pytest
from ray.data._internal.table_block import TableBlockAccessor
from ray.data.block import BlockType

from kakugo.dataset.stage import CANDIDATE_COLUMNS, _candidate
from kakugo.generate.pipeline import ITEM_COLUMNS
from kakugo.generate.requests import PROMPT_COLUMNS
from kakugo.steps import frame


def shuffle_schema(df):
    """The schema Ray's shuffle map task gives a pandas block."""
    return TableBlockAccessor.try_convert_block_type(
        df, block_type=BlockType.ARROW).schema.remove_metadata()


PROMPT = {"id": "p1", "language": "gla_Latn", "language_name": "Scottish Gaelic",
          "category": "topic", "source_step": "items", "parent_id": "x", "prompt": "Ciamar?",
          "context": "", "task": "", "revise": True, "revised": False, "original_prompt": ""}
ITEM = {"id": "i1", "language": "gla_Latn", "language_name": "Scottish Gaelic", "seed": "s",
        "specific": False, "system": "sys", "item": "iasgach", "order": "1-x-0000"}
CANDIDATE = _candidate({"id": "c1", "language": "gla_Latn", "category": "topic",
                        "prompt_tokens": 3, "completion_tokens": 4, "finish_reason": "stop",
                        "error": ""}, "generated", prompt="Ciamar?", response="Gu math",
                       language_id_confidence=0.9)


@pytest.mark.parametrize(("columns", "row"), [(PROMPT_COLUMNS, PROMPT), (ITEM_COLUMNS, ITEM),
                                              (CANDIDATE_COLUMNS, CANDIDATE)])
def test_an_empty_block_has_the_types_of_a_full_one(columns, row):
    assert shuffle_schema(frame([], columns)) == shuffle_schema(frame([row], columns))
