import itertools

import pytest
import torch

from kakugo.models import build_embedded
from kakugo.train.data import (
    IGNORE_INDEX,
    collate,
    model_inputs,
    pack,
    packed_attention,
    packing_efficiency,
    tokenize_conversation,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Ciamar a tha thu?"},
    {"role": "assistant", "content": "Tha gu math."},
    {"role": "user", "content": "Agus thusa?"},
    {"role": "assistant", "content": "Glè mhath, tapadh leat."},
]


@pytest.fixture(scope="module")
def student():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_embedded("tiny-granite")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


def test_only_assistant_tokens_are_labels(student):
    tokenizer, _ = student
    sample = tokenize_conversation(CONVERSATION, tokenizer, 512)
    labelled = [i for i, label in zip(sample["input_ids"], sample["labels"], strict=True)
                if label != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert "Tha gu math." in text and "Glè mhath, tapadh leat." in text
    assert "Ciamar" not in text and "Agus" not in text and "Be brief" not in text
    assert text.count(tokenizer.eos_token) == 2  # each turn learns to end
    # every labelled token equals its input token
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(sample["input_ids"],
                                                               sample["labels"], strict=True))


def test_truncation_keeps_what_fits_and_drops_samples_with_no_answer(student):
    tokenizer, _ = student
    full = tokenize_conversation(CONVERSATION, tokenizer, 512)
    short = tokenize_conversation(CONVERSATION, tokenizer, 30)
    assert len(short["input_ids"]) == 30 and short["input_ids"] == full["input_ids"][:30]
    assert tokenize_conversation(CONVERSATION, tokenizer, 8) is None


def test_packing_restarts_positions_and_reports_efficiency():
    samples = [{"input_ids": [1] * n, "labels": [IGNORE_INDEX] + [1] * (n - 1)}
               for n in (6, 5, 4, 3, 2)]
    rows = list(pack(samples, 10))
    assert sorted(len(r["input_ids"]) for r in rows) == [10, 10]  # 6+4 and 5+3+2
    assert sum(r["samples"] for r in rows) == 5
    six = next(r for r in rows if r["samples"] == 2)
    assert six["position_ids"] == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert packing_efficiency(sum(len(r["input_ids"]) for r in rows), len(rows), 10) == 1.0
    assert packing_efficiency(6, 1, 10) == 0.6


def test_packing_fills_rows_that_first_fit_decreasing_leaves_short():
    """5+3+2 and 4+3+3 fill two rows of 10; first-fit decreasing puts 5 and 4 together
    and needs a third row. Every sample is packed once, in its own order of tokens."""
    lengths = (5, 4, 3, 3, 3, 2)
    samples = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths)]
    rows = list(pack(samples, 10))
    assert [len(r["input_ids"]) for r in rows] == [10, 10]
    packed = sorted(tuple(r["input_ids"][p:p + n]) for r in rows
                    for p, n in _sample_spans(r["position_ids"]))
    assert packed == sorted(tuple(s["input_ids"]) for s in samples)


def _sample_spans(position_ids: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return [(a, b - a) for a, b in itertools.pairwise(starts)]


def test_packed_and_unpacked_losses_are_equal(student):
    """No attention or position leakage: the summed token loss of samples packed into one
    row equals the sum over the samples run one by one."""
    tokenizer, model = student
    model.eval()
    conversations = [CONVERSATION, CONVERSATION[:3],
                     [{"role": "user", "content": "Dè an t-àm a th' ann?"},
                      {"role": "assistant", "content": "Tha e trì uairean."}]]
    samples = [tokenize_conversation(c, tokenizer, 512) for c in conversations]

    def summed_loss(rows, mask=True):
        batch = collate(rows, tokenizer.pad_token_id)
        inputs = model_inputs(batch, torch.float32, "sdpa") if mask else batch
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                           attention_mask=inputs.get("attention_mask")).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum").item()

    separate = sum(summed_loss([{**s, "position_ids": list(range(len(s["input_ids"])))}])
                   for s in samples)
    packed = list(pack(samples, 512))
    assert len(packed) == 1
    assert summed_loss(packed) == pytest.approx(separate, rel=1e-4)
    # without the block mask the samples see each other and the loss differs
    assert summed_loss(packed, mask=False) != pytest.approx(separate, rel=1e-4)


def test_flash_attention_gets_sequence_boundaries():
    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 0, 0]])
    kwargs = packed_attention(positions.reshape(1, -1), torch.bfloat16, "flash_attention_2")
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 8, 9, 10]
    assert kwargs["max_length_q"] == 3
    mask = packed_attention(positions[:1], torch.float32, "sdpa")["attention_mask"][0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                       [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]


def test_zero3_fetches_each_decoder_layer_whole():
    """`training.zero3_layer_fetch`: every decoder layer is one ZeRO-3 fetch unit (a leaf),
    and nothing else is."""
    from deepspeed.utils import z3_leaf_module
    from transformers import AutoModelForCausalLM

    from kakugo.train.engine import fetch_whole_layers

    model = AutoModelForCausalLM.from_pretrained(build_embedded("tiny-granite"))
    layers = list(model.base_model.layers)
    assert not any(z3_leaf_module(m) for m in model.modules())
    fetch_whole_layers(model)
    leaves = [m for m in model.modules() if z3_leaf_module(m)]
    assert len(leaves) == len(layers) > 1 and all(a is b for a, b in zip(leaves, layers))


def test_model_inputs_for_varlen_kernels_are_flat_rows_on_the_device():
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, -100, 9],
             "position_ids": [0, 1, 2, 0, 1]},
            {"input_ids": [3, 4], "labels": [-100, 4], "position_ids": [0, 1]}]
    batch = collate(rows, 0)
    inputs = model_inputs(batch, torch.bfloat16, "torch_varlen", torch.device("cpu"))
    assert inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4, 0, 0, 0]]
    assert inputs["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 8, 9, 10]
    assert inputs["max_length_q"] == 3
    assert all(v.device.type == "cpu" for v in inputs.values() if torch.is_tensor(v))
    # no device: the tensors stay where they are (the same objects for the mask path)
    assert model_inputs(batch, torch.float32, "sdpa")["input_ids"] is batch["input_ids"]


def test_the_splits_are_packed_apart_and_lose_no_sample():
    import pandas as pd

    from kakugo.train.trainer import TokenizeAndPack, is_validation

    ids = [f"row-{i:03d}" for i in range(40)]
    batch = pd.DataFrame({"id": ids, "messages": [CONVERSATION[:3]] * len(ids)})
    packer = TokenizeAndPack(str(build_embedded("tiny-granite")), 128, True, 0.25, 0)
    out = packer(batch)
    held_out = sum(is_validation(i, 0.25, 0) for i in ids)
    assert 0 < held_out < len(ids)
    by_split = out.groupby("split")["samples"].sum().to_dict()
    assert by_split == {"train": len(ids) - held_out, "validation": held_out}
    assert (out["tokens"] == out["input_ids"].map(len)).all()
    assert (out["tokens"] <= 128).all() and (out["samples"] > 1).any()  # packed
