"""fp32 Linear weights repacked, in place, into MKL's GEMM-ready layout.

Why: at decode time every Linear multiplies a handful of rows (one per running request) by its
whole weight. torch's `F.linear` then hands MKL a plain row-major weight, which MKL re-tiles on
every call; `cblas_sgemm_pack` does that tiling once. On 2 cores, the decode step's products at
16 rows take 71 ms with plain weights and 46 ms packed (1 row: the same, 23 ms: that is bound by
memory, not tiling). `tandem bench` measures the whole step both ways (`--sections ceiling`).

The packed weight *replaces* the plain one (a module keeps only a zero-byte stand-in for its
shape), so packing costs no memory; transformers' forward keeps working because the module is
still called like a Linear. torch's `mkl::_mkl_linear` uses a packed weight only when told the
row count it was packed for; MKL's packed B panels do not depend on that count, so each call
passes its own (checked for 1 to 600 rows in `tests/test_engine.py`).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("tandem.engine")

PACK_ROWS = 16  # the row count MKL is told when packing; any count computes with the result


def _packable(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu" and not module._forward_hooks and not module._forward_pre_hooks)


def let_inductor_call_packed_linears() -> None:
    """Let torch.compile take a graph that calls `mkl::_mkl_linear` on these packed weights.

    Inductor lowers that op only for weights it packed itself (under `freezing`, with its own copy
    of every weight) and fails on a packed weight that arrives as an input, as ours do. Registered
    as a plain fallback, the compiled graph calls the same MKL kernel directly, and no weight is
    copied. This touches inductor's lowering table, which is private; a failure here only means
    the engine keeps its eager step."""
    from torch._inductor import lowering
    from torch._inductor import mkldnn_lowerings  # noqa: F401  (registers the lowering that is replaced here)

    op = torch.ops.mkl._mkl_linear
    if op.default in lowering.fallbacks:
        return
    lowering.lowerings.pop(op.default, None)
    lowering.make_fallback(op, warn=False)


class PackedLinear(torch.nn.Module):
    """y = x W^T + b with W held only in MKL's packed layout."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(linear.weight.detach().contiguous(), PACK_ROWS)
        self.bias = linear.bias
        # `_mkl_linear` reads only the shape and dtype of the plain weight once it has the packed one
        self._shape = torch.zeros((), dtype=torch.float32).expand(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        return torch.ops.mkl._mkl_linear(x, self.packed, self._shape, self.bias, rows)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed=MKL"


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every plain fp32 CPU Linear of `model` by a PackedLinear (idempotent); returns how
    many of the model's Linear layers are packed."""
    if torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
        targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if _packable(child)]
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(child))
        if targets:
            log.info("repacked %d Linear weights into MKL's GEMM layout", len(targets))
    return sum(isinstance(m, PackedLinear) for m in model.modules())
