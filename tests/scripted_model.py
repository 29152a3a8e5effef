"""A real model that writes a known reply: a one-layer Llama whose weights make the next
token depend only on the current one (attention and MLP outputs are zero, each scripted
token has an embedding direction of its own, the LM head maps it to its successor). Every
prompt ends in a token outside the script, whose shared direction leads to the first
scripted token; the script ends with the end-of-sequence token. Its tokenizer is
SmolLM2's with `<think>` and `</think>` added as tokens of their own, as a reasoning
model's is, so vLLM's reasoning parsers find them.

Served by vLLM like any checkpoint, it answers every free-text request with exactly
`SCRIPT`: a reasoning trace in think tags, then the answer. Where a JSON schema constrains
the reply after the trace, the schema's grammar masks the scripted token and the reply
is whatever the grammar allows.
"""

from __future__ import annotations

from pathlib import Path

TRACE = ("<think>", " The", " user", " needs", " an", " answer", "</think>")
ANSWER = (" It", " is", " cold")
SCRIPT = (*TRACE, *ANSWER)
THINK_TOKENS = ("<think>", "</think>")


def build_scripted_model(out: Path) -> Path:
    """Write the model and its tokenizer to `out`; returns `out`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kakugo.models import build_embedded

    tokenizer = AutoTokenizer.from_pretrained(build_embedded("smollm2-135m-instruct"))
    tokenizer.add_tokens(list(THINK_TOKENS))
    ids = []
    for piece in SCRIPT:
        encoded = tokenizer.encode(piece, add_special_tokens=False)
        assert len(encoded) == 1, f"{piece!r} is not one token: {encoded}"
        ids.append(encoded[0])
    ids.append(tokenizer.eos_token_id)
    assert len(set(ids)) == len(ids), "a scripted token appears twice"
    hidden = 64
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden,
        num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=hidden,
        max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        embed = torch.zeros(len(tokenizer), hidden)
        embed[:, 0] = 1.0  # every token outside the script: direction 0
        head = torch.zeros(len(tokenizer), hidden)
        head[ids[0], 0] = 20.0  # direction 0 -> the first scripted token
        for position, token in enumerate(ids[:-1], start=1):
            embed[token] = 0.0
            embed[token, position] = 1.0
            head[ids[position], position] = 20.0  # each scripted token -> its successor
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out
