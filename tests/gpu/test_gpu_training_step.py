"""GPU checks: need CUDA, no Ray (the GPU machine has torch and transformers only)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def _samples() -> list[dict]:
    """Three random samples of 40, 25 and 60 tokens, labels on all but the first 5."""
    from kakugo.train.data import IGNORE_INDEX

    return [{"input_ids": ids, "labels": [IGNORE_INDEX] * 5 + ids[5:]}
            for ids in (torch.randint(0, 1000, (n,)).tolist() for n in (40, 25, 60))]


def test_granite_shaped_student_trains_in_bf16_on_cuda():
    from transformers import AutoModelForCausalLM

    from kakugo.models import TINY_GRANITE, granite_config

    config = granite_config(**TINY_GRANITE, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = torch.randint(0, 1000, (2, 128), device="cuda")
    losses = []
    for _ in range(20):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0  # ~2 nats in 20 steps on CPU fp32


@pytest.mark.parametrize("attention", ["sdpa", "torch_varlen"])
def test_packed_rows_match_separate_samples_in_bf16_on_cuda(attention):
    """Our packing and masking on the GPU paths: summed loss of a packed row equals the
    samples run one by one (bf16 tolerance)."""
    from transformers import AutoModelForCausalLM

    from kakugo.models import TINY_GRANITE, granite_config
    from kakugo.train.attention import register
    from kakugo.train.data import IGNORE_INDEX, collate, model_inputs, pack

    register()

    config = granite_config(**TINY_GRANITE, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                             attn_implementation=attention).cuda().eval()
    samples = _samples()

    def summed(rows):
        inputs = model_inputs(collate(rows, 0), torch.bfloat16, attention, "cuda")
        labels = inputs.pop("labels")
        with torch.no_grad():
            logits = model(**inputs).logits.float()
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum").item()

    separate = sum(summed([{**s, "position_ids": list(range(len(s["input_ids"])))}])
                   for s in samples)
    assert summed(list(pack(samples, 256))) == pytest.approx(separate, rel=2e-2)


def test_torch_varlen_runs_fp32_weights_under_bf16_autocast():
    """fp32 master weights under bf16 autocast (the bare reference loop of gpu_train.py):
    rotary embeddings leave q and k in fp32, which the flash kernel refuses; torch_varlen
    casts them to the autocast dtype, and the loss matches sdpa's under the same autocast."""
    from transformers import AutoModelForCausalLM

    from kakugo.models import TINY_GRANITE, granite_config
    from kakugo.train.attention import register
    from kakugo.train.data import collate, model_inputs, pack

    register()
    config = granite_config(**TINY_GRANITE, use_cache=False)
    rows = list(pack(_samples(), 256))
    losses = {}
    for attention in ("sdpa", "torch_varlen"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                 attn_implementation=attention).cuda()
        inputs = model_inputs(collate(rows, 0), torch.bfloat16, attention, "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        losses[attention] = loss.item()
    assert losses["torch_varlen"] == pytest.approx(losses["sdpa"], rel=2e-2)
