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


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                split: bool = False) -> torch.Tensor:
    """x W^T + b for W = qweight * scale; x in fp32, any leading shape. `split`: each row goes in
    as two int8 rows, its rounding and what that rounding left, one product for both: about 15
    bits of the row rather than 8, for the output head, where rounding the row on its largest
    value would move the logits by more than the gap between the two best tokens."""
    flat = x.reshape(-1, x.shape[-1])
    if flat.shape[0] == 0:
        out = flat.new_zeros((0, qweight.shape[0]))
    elif split:
        high_scale = _row_scale(flat)
        high = torch.round(flat / high_scale)
        rest = flat - high * high_scale
        rest_scale = _row_scale(rest)
        rows = flat.shape[0]
        both = torch._int_mm(torch.cat((high, torch.round(rest / rest_scale))).to(torch.int8), qweight.t())
        out = (both[:rows] * high_scale + both[rows:] * rest_scale) * scale
    else:
        row_scale = _row_scale(flat)
        xq = torch.round(flat / row_scale).to(torch.int8)  # |flat / row_scale| <= 127 by construction
        out = torch._int_mm(xq, qweight.t()) * (row_scale * scale)
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], qweight.shape[0])

