"""bf16 weights for CPU products (`--quant bf16` on a CPU): each weight rounded to bf16 once and
laid out by oneDNN for its AMX / AVX512_BF16 kernels (`mkldnn._reorder_linear_weight`), each
input row rounded to bf16 as it goes in; norms, attention, the KV cache and sampling stay fp32.

Why: a decode step's products read every weight once per step, and on a CPU with AMX tiles a
bf16 product with the weight already in the kernel's layout reads half of fp32's bytes and
multiplies faster than MKL's fp32 at every batch size. `tandem bench` measures the products
(profile), the step (throughput) and perplexity against fp32 (quantization).

Why blocks: oneDNN picks its kernel by the row count, and each kernel sums in its own order, so
a row's product would depend on how many rows ran beside it. A decode step's rows go in blocks
of at most ROW_BLOCK (one kernel, the "narrow" one); a prompt's positions (`wide`) in blocks of
exactly WIDE_BLOCK rows (zero rows added to the last), so that every block takes the same wide
kernel, which reads each weight once for four times the rows. (Between 33 and 255 rows oneDNN
switches kernels at counts that depend on the weight's shape: a fixed count avoids them all.)
Either way a row's product is the same alone or in any batch (tests/engine/test_engine.py), which
keeps the engine's batched answers equal to one request's.
"""

from __future__ import annotations

import torch

ROW_BLOCK = 32  # the largest row count of oneDNN's narrow kernel (measured; see above)
WIDE_BLOCK = 128  # rows in every block of a prompt's products (see above)
PACK_ROWS = 16  # the row count oneDNN is told when packing (a layout hint: any count computes with it)


def native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512_BF16); elsewhere oneDNN
    emulates it, slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return torch.backends.mkldnn.is_available() and any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W in bf16, in oneDNN's layout for its products; an empty stand-in) for W [out, in]."""
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16).contiguous(), PACK_ROWS)
    return packed, weight.new_empty(0)


def bf16_product(rows: torch.Tensor, packed: torch.Tensor, _unused: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """rows W^T in fp32, for rows fp32 [n, in], n > 0; the product is summed in fp32 and rounded
    to bf16 by oneDNN. `wide`: the rows are a prompt's positions (see above)."""
    x = rows.to(torch.bfloat16)
    if not wide:
        outs = [torch.ops.mkldnn._linear_pointwise(block, packed, None, "none", [], "") for block in x.split(ROW_BLOCK)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs)).float()
    out = rows.new_empty((rows.shape[0], packed.shape[0]))
    for start in range(0, rows.shape[0], WIDE_BLOCK):
        block = x[start : start + WIDE_BLOCK]
        real = block.shape[0]
        if real < WIDE_BLOCK:
            block = torch.cat((block, block.new_zeros((WIDE_BLOCK - real, block.shape[1]))))
        out[start : start + real] = torch.ops.mkldnn._linear_pointwise(block, packed, None, "none", [], "")[:real]
    return out
