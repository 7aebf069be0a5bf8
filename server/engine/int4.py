"""4-bit weight groups for CPU decode (`--quant q4`): every 32 weights of a row share a bf16 scale
and zero, the input row goes in as bf16, and torch's int4 kernel unpacks the weights as it
multiplies (`_weight_int4pack_mm_for_cpu`, the layout of gpt-fast and torchao).

Why: a one-row decode step is bound by the weight bytes it reads; four bits read an eighth of
fp32's. Why this grid: the embedded default model ships as Q4_1 GGUF blocks (32 weights, a
scale and a minimum each, the block's extremes mapped to 0 and 15), so a group's minimum and
maximum give back the file's own levels: the products are the file's weights, up to bf16's
rounding of scale and zero. Why bf16 inputs, not int8 (int8.py): rounding the activations of
a row to 8 bits on its largest value loses the small channels next to an outlier, and with
them the model's memory of an earlier turn in a chat; bf16 keeps 8 significant bits per value
whatever its neighbours are. A row's product depends only on that row (tests/engine/test_engine.py).
"""

from __future__ import annotations

import torch

GROUP = 32  # weights per scale and zero, as in the GGUF's Q4_0/Q4_1 blocks
LEVELS = 15  # 4 bits: 0..15
MIDDLE = 8  # the kernel computes (q - 8) * scale + zero


def supports(weight: torch.Tensor) -> bool:
    """The kernel needs whole groups along the input dimension."""
    return weight.dim() == 2 and weight.shape[1] % GROUP == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed 4-bit weight, scales and zeros [in/32, out, 2] in bf16) for W [out, in]."""
    w = weight.detach().float()
    out_features, in_features = w.shape
    groups = w.reshape(-1, GROUP)
    low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
    scale = ((high - low).clamp_min(torch.finfo(torch.float32).tiny) / LEVELS).to(torch.bfloat16)
    zero = (low + scale.float() * MIDDLE).to(torch.bfloat16)
    base = zero.float() - scale.float() * MIDDLE  # the level 0 the kernel will use, after bf16 rounding
    q = ((groups - base) / scale.float()).round_().clamp_(0, LEVELS).to(torch.int32).reshape(out_features, in_features)
    scales_zeros = torch.cat([scale.reshape(out_features, -1, 1), zero.reshape(out_features, -1, 1)], dim=2)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return packed, scales_zeros.transpose(0, 1).contiguous()


def int4_product(rows: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """rows W^T in fp32, for rows fp32 [n, in], n > 0."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(torch.bfloat16), packed, GROUP, scales_zeros).float()
