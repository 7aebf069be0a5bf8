"""One decode step for the running batch of a Llama-family model (Llama, Qwen2), without going
through transformers' forward.

Why by hand: a decode step multiplies a few rows by every weight, and on a CPU transformers'
forward adds a fixed cost around those products (module calls, attention-interface dispatch, a
4-D mask built per step and per layer group) that is a large share of a small model's step: on
SmolLM2-135M at 16 rows, 86 ms for transformers' forward against about 50 ms for the products.
This step calls the same modules' weights through torch's functional ops, uses transformers' own
rotary embedding, builds the padding mask once per step, and writes the new keys and values into
the running batch's slotted cache in place. `tests/test_engine.py` checks that its logits and
cache match transformers' forward at 1 and at several left-padded rows; `tandem bench`
(`--sections ceiling`) measures both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .packed import PackedLinear

SUPPORTED_TYPES = ("llama", "qwen2")


def supports(model: Any) -> bool:
    """Plain or packed fp32-style Linear layers in a Llama-shaped decoder with full attention,
    and no forward hooks (a hooked model is instrumented: it keeps transformers' forward)."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES or getattr(config, "use_sliding_window", False):
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return False
    for layer in inner.layers:
        projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(p) not in (torch.nn.Linear, PackedLinear) for p in projections):  # bitsandbytes layers keep their own forward
            return False
    return type(model.lm_head) in (torch.nn.Linear, PackedLinear)


@torch.inference_mode()
def decode_step(model: Any, tokens: torch.Tensor, positions: torch.Tensor, layers: list[Any], mask: torch.Tensor) -> torch.Tensor:
    """tokens, positions: [B]; layers: the batch's SlottedLayer per decoder layer (updated in
    place); mask: [B, T] with the new column included, 0 where a row is left-padded.
    Returns the logits [B, V] for each row's next token."""
    inner = model.model
    rows = tokens.shape[0]
    x = inner.embed_tokens(tokens.view(rows, 1))  # [B, 1, hidden]
    cos, sin = inner.rotary_emb(x, positions.view(rows, 1))
    # One boolean mask for every layer; none at all when no row is padded (always so for one row).
    attn_mask = None if bool(mask.all()) else mask.bool()[:, None, None, :]
    for layer, cache in zip(inner.layers, layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = _rms_norm(layer.input_layernorm, x)
        q = attn.q_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = cache.update(k, v)
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, scale=attn.scaling,
                                           enable_gqa=keys.shape[1] != q.shape[1])
        x = x + attn.o_proj(o.transpose(1, 2).reshape(rows, 1, -1))
        h = _rms_norm(layer.post_attention_layernorm, x)
        x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    x = _rms_norm(inner.norm, x)
    return model.lm_head(x[:, -1])  # type: ignore[no-any-return]


def _rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """torch's fused RMSNorm (one op instead of five) where it computes exactly what transformers'
    module does: in fp32. Other dtypes keep the module, which rounds before scaling by the weight."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)  # type: ignore[no-any-return]
