"""int8 products for CPU decode and prefill: weights in int8 with one scale per output channel,
each input row quantized to int8 with its own scale, summed exactly in int32 (`torch._int_mm`).

Why: a one-row decode step reads every weight once, so its time is the weight bytes over the
memory bandwidth; int8 reads a quarter of fp32's bytes, and the integer kernel (VNNI on this
CPU) also beats fp32 GEMM at prefill sizes. `tandem bench --sections quantization` measures the
step and the perplexity against fp32 side by side.

Why per row, not per tensor (as torch's dynamic quantization does): a row's product then
depends only on that row, bit for bit, because integer sums are exact whatever the kernel's
blocking. (The fp32 ops between products still round by kernel, and rounding each row to int8
can carry such a last bit into a token: fast_decode._attend_each, README "int8 products".)
"""

from __future__ import annotations

import torch

QMAX = 127  # symmetric int8: -127..127 (no -128, so that negating a value never overflows)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight [out, in], fp32 scale per output channel [out]) with weight ~ q * scale."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / QMAX
    q = torch.round(w / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return q, scale.contiguous()


def _row_scale(rows: torch.Tensor) -> torch.Tensor:
    return rows.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / QMAX


def int8_product(rows: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """rows W^T for W = qweight * scale; rows fp32 [n, in], n > 0."""
    row_scale = _row_scale(rows)
    xq = torch.round(rows / row_scale).to(torch.int8)  # |rows / row_scale| <= 127 by construction
    return torch._int_mm(xq, qweight.t()) * (row_scale * scale)


def int8_split_product(rows: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """As int8_product, each row going in as two int8 rows, its rounding and what that rounding
    left, one product for both: about 15 bits of the row rather than 8, for the output head,
    where rounding the row on its largest value would move the logits by more than the gap
    between the two best tokens."""
    high_scale = _row_scale(rows)
    high = torch.round(rows / high_scale)
    rest = rows - high * high_scale
    rest_scale = _row_scale(rest)
    both = torch._int_mm(torch.cat((high, torch.round(rest / rest_scale))).to(torch.int8), qweight.t())
    n = rows.shape[0]
    return (both[:n] * high_scale + both[n:] * rest_scale) * scale
