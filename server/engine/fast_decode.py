"""One decode step for a single row of a Llama-family model (Llama, Qwen2), without going
through transformers' forward.

Why by hand: at batch 1 a small model's step is mostly framework time, not weight reads. On
SmolLM2-135M (fp32, 2 cores) the weights' matrix-vector products take about 27 ms a token, and
transformers' forward adds about 10 ms more for module calls, attention-interface dispatch and
mask building. This step calls the same weights through torch's functional ops, with
transformers' own rotary embedding, and writes the new key and value into the running batch's
slotted cache in place, so the batch can grow again at any step. `tandem bench` (the ceiling
section) measures both paths side by side; `tests/test_engine.py` checks that they agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

SUPPORTED_TYPES = ("llama", "qwen2")


def supports(model: Any) -> bool:
    """Plain (unquantized) Linear layers in a Llama-shaped decoder with full attention."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES or getattr(config, "use_sliding_window", False):
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    for layer in inner.layers:
        projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(p) is not torch.nn.Linear for p in projections):  # bitsandbytes layers keep their own forward
            return False
    return type(model.lm_head) is torch.nn.Linear


@torch.inference_mode()
def decode_one(model: Any, token: torch.Tensor, position: torch.Tensor, layers: list[Any]) -> torch.Tensor:
    """token, position: [1]; layers: the batch's SlottedLayer per decoder layer (updated in place).
    Returns the logits [1, V] for the next token."""
    inner = model.model
    x = inner.embed_tokens(token.view(1, 1))  # [1, 1, hidden]
    cos, sin = inner.rotary_emb(x, position.view(1, 1))
    for layer, cache in zip(inner.layers, layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = _rms_norm(layer.input_layernorm, x)
        q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias).view(1, 1, -1, attn.head_dim).transpose(1, 2)
        k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias).view(1, 1, -1, attn.head_dim).transpose(1, 2)
        v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias).view(1, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = cache.update(k, v)
        # one query row that sees every cached position: no mask needed
        o = F.scaled_dot_product_attention(q, keys, values, scale=attn.scaling, enable_gqa=keys.shape[1] != q.shape[1])
        x = x + F.linear(o.transpose(1, 2).reshape(1, 1, -1), attn.o_proj.weight, attn.o_proj.bias)
        h = _rms_norm(layer.post_attention_layernorm, x)
        gate = F.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias)
        up = F.linear(h, mlp.up_proj.weight, mlp.up_proj.bias)
        x = x + F.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
    x = _rms_norm(inner.norm, x)
    return F.linear(x[:, -1], model.lm_head.weight, model.lm_head.bias)


def _rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """torch's fused RMSNorm (one op instead of five) where it computes exactly what transformers'
    module does: in fp32. Other dtypes keep the module, which rounds before scaling by the weight."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)  # type: ignore[no-any-return]
