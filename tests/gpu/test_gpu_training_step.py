"""GPU checks: need CUDA, no Ray (the GPU machine has torch and transformers only)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_granite_shaped_student_trains_in_bf16_on_cuda():
    from transformers import AutoConfig, AutoModelForCausalLM

    from kakugo.models import GRANITE_MICRO_CONFIG, TINY_GRANITE

    config = AutoConfig.from_pretrained(GRANITE_MICRO_CONFIG, **TINY_GRANITE,
                                        layer_types=["attention"] * TINY_GRANITE["num_hidden_layers"])
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
    assert losses[-1] < losses[0] * 0.5
