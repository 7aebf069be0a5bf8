"""fp32 Linear weights repacked, in place, into MKL's GEMM-ready layout (or, for `--quant w8a8`,
into int8: int8.py; for `--quant q4`, into 4-bit groups: int4.py).

Why: at decode time every Linear multiplies a handful of rows (one per running request) by its
whole weight. torch's `F.linear` then hands MKL a plain row-major weight, which MKL re-tiles on
every call; `cblas_sgemm_pack` does that tiling once. On 2 cores, the decode step's products at
16 rows take 71 ms with plain weights and 46 ms packed (1 row: the same, 23 ms: that is bound by
memory, not tiling). `tandem bench` measures the whole step both ways (`--sections ceiling`).

The packed weight *replaces* the plain one (a module keeps only a zero-byte stand-in for its
shape), so packing costs no memory; transformers' forward keeps working because the module is
still called like a Linear. torch's `mkl::_mkl_linear` uses a packed weight only when told the
row count it was packed for; MKL's packed B panels do not depend on that count, so each call
passes its own (checked for 1 to 600 rows in `tests/engine/test_engine.py`).

Projections that read the same input (a layer's q/k/v, its gate/up) are packed as one matrix
(`FusedPackedLinear`): at one row each product is bound by memory, and a small one does not
reach the bandwidth a large one does (MKL's threads start, stream a megabyte and join); on
SmolLM2-135M the step's 211 products become 121, measured in `tandem bench` (ceiling).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import cast

import torch

from . import bf16, int4
from .int8 import int8_product, int8_split_product, quantize_weight

log = logging.getLogger("tandem.engine")

PACK_ROWS = 16  # the row count MKL is told when packing; any count computes with the result
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # children that read the same input
# format -> (quantize W into (packed, aux), product of 2-D rows with them); "mkl" is packed apart
_QUANTIZED = {
    "int8": (quantize_weight, int8_product),
    "int8x2": (quantize_weight, int8_split_product),
    "int4": (int4.quantize_weight, int4.int4_product),
    "bf16": (bf16.quantize_weight, bf16.bf16_product),
}
FORMATS = ("mkl", *_QUANTIZED)
_step = threading.local()  # .positions: set while several positions per row are multiplied as decode steps


@contextlib.contextmanager
def as_decode_steps() -> Iterator[None]:
    """Products over several positions of each row computed as a decode step computes each one:
    speculative verification (its logits must be the plain step's, bit for bit) and a long
    prompt's chunks (a few rows each, which bf16's wide blocks would pad to 128: a chunked
    prompt's prefill took twice as long). Elsewhere a product over several positions per row
    is a whole prompt's, which bf16 multiplies in its wide blocks (bf16.py)."""
    _step.positions = True
    try:
        yield
    finally:
        _step.positions = False


def _prompt_positions(x: torch.Tensor) -> bool:
    """Whether x [..., positions, in] holds several positions of each row (a prompt), outside
    `as_decode_steps`."""
    return x.dim() >= 3 and x.shape[-2] > 1 and not getattr(_step, "positions", False)


def _packable(module: torch.nn.Module) -> bool:
    return (
        type(module) is torch.nn.Linear
        and module.weight.dtype == torch.float32
        and module.weight.device.type == "cpu"
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )


def _pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W in MKL's packed layout, a zero-byte stand-in for W's shape): `_mkl_linear` reads only
    the shape and dtype of the plain weight once it has the packed one."""
    with torch.no_grad():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)
    return packed, torch.zeros((), dtype=torch.float32).expand(*weight.shape)


def let_inductor_call_packed_linears() -> None:
    """Let torch.compile take a graph that calls `mkl::_mkl_linear` (or oneDNN's
    `mkldnn::_linear_pointwise`, for bf16) on these packed weights.

    Inductor lowers those ops only for weights it packed itself (under `freezing`, with its own
    copy of every weight) and fails on a packed weight that arrives as an input, as ours do.
    Registered as plain fallbacks, the compiled graph calls the same kernels directly, and no
    weight is copied. This touches inductor's lowering table, which is private; a failure here
    only means the engine keeps its eager step."""
    from torch._inductor import (
        lowering,
        mkldnn_lowerings,  # noqa: F401  (registers the lowerings that are replaced here)
    )

    for op in (torch.ops.mkl._mkl_linear, torch.ops.mkldnn._linear_pointwise):
        if op.default in lowering.fallbacks:
            continue
        lowering.lowerings.pop(op.default, None)
        lowering.make_fallback(op, warn=False)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, shape: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + b for W packed by `_pack` (`packed`, `shape`)."""
    if torch.compiler.is_compiling():
        return _mkl_linear_rows(x, packed, shape, bias)
    return torch.ops.mkl._mkl_linear(x, packed, shape, bias, x.numel() // x.shape[-1])  # type: ignore[no-any-return]


@torch.library.custom_op("tandem::mkl_linear_rows", mutates_args=())
def _mkl_linear_rows(x: torch.Tensor, packed: torch.Tensor, shape: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`mkl::_mkl_linear` with its row count read from `x` when it runs. Why, in a compiled graph:
    passed as an argument, that count makes torch.compile specialise the graph to one batch
    size (one compile per size); read inside an opaque op, the batch stays symbolic."""
    return torch.ops.mkl._mkl_linear(x, packed, shape, bias, x.numel() // x.shape[-1])  # type: ignore[no-any-return]


@_mkl_linear_rows.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, shape: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], shape.shape[0]))


class _Weight(torch.nn.Module):
    """W in one of FORMATS: MKL's packed fp32 (`packed`, with `_aux` a zero-byte stand-in for W's
    shape), int8 (`packed` the int8 matrix, `_aux` its per-channel scales; "int8x2": the same, each
    input row split into two int8 rows), int4 (`packed` the
    kernel's 4-bit layout, `_aux` its group scales and zeros) or bf16 (`packed` oneDNN's bf16
    layout, bf16.py). A weight int4 cannot hold (its input size not whole groups) stays in MKL's
    layout."""

    fmt: str
    rows_out: int  # W's output size

    def _hold(self, weight: torch.Tensor, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown weight format {fmt!r}; choose from {', '.join(FORMATS)}")
        if (fmt == "int4" and not int4.supports(weight)) or (fmt == "bf16" and not bf16.available()):
            fmt = "mkl"
        self.fmt, self.rows_out = fmt, weight.shape[0]
        if fmt == "mkl":
            self.packed, self._aux = _pack(weight)
        else:  # buffers: counted in the model's memory footprint (MKL's packed tensor is opaque to it)
            for name, tensor in zip(("packed", "_aux"), _QUANTIZED[fmt][0](weight)):
                self.register_buffer(name, tensor, persistent=False)

    def _product(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.fmt == "mkl":
            return _packed_linear(x, self.packed, self._aux, bias)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 0:
            out = rows.new_zeros((0, self.rows_out))
        elif self.fmt == "bf16":
            out = bf16.bf16_product(rows, self.packed, self._aux, wide=_prompt_positions(x))
        else:
            out = _QUANTIZED[self.fmt][1](rows, self.packed, self._aux)
        if bias is not None:
            out = out + bias
        return out.view(*x.shape[:-1], self.rows_out)

    def _format(self) -> str:
        return "MKL" if self.fmt == "mkl" else self.fmt


class PackedLinear(_Weight):
    """y = x W^T + b with W held only in MKL's packed layout (or in int8)."""

    def __init__(self, linear: torch.nn.Linear, fmt: str = "mkl") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._hold(linear.weight, fmt)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed={self._format()}"


class FusedPackedLinear(_Weight):
    """Several Linears that read the same input, as one packed matrix: `forward` returns each
    one's output. transformers' forward still calls them one by one, through `FusedPart`s."""

    def __init__(self, linears: Sequence[torch.nn.Linear], fmt: str = "mkl") -> None:
        super().__init__()
        self.in_features = linears[0].in_features
        self.sizes = [linear.out_features for linear in linears]
        self._hold(torch.cat([linear.weight for linear in linears]), fmt)
        biases = [linear.bias for linear in linears]
        self.bias = (
            None
            if all(b is None for b in biases)
            else torch.nn.Parameter(
                torch.cat(
                    [b.detach() if b is not None else linear.weight.new_zeros(linear.out_features) for b, linear in zip(biases, linears)]
                ),
                requires_grad=False,
            )
        )
        self._pending: tuple[weakref.ref[torch.Tensor], int, list[torch.Tensor | None]] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._product(x, self.bias).split(self.sizes, dim=-1)

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output `index` of `forward(x)`. The whole product is computed once for a run of
        sibling calls on the same `x` (as transformers makes them): each output is handed out
        once and then dropped, so nothing outlives that run but the outputs not yet asked for."""
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        pending = self._pending
        if pending is None or pending[0]() is not x or pending[1] != version or pending[2][index] is None:
            pending = self._pending = (weakref.ref(x), version, list(self(x)))
        out = pending[2][index]
        pending[2][index] = None
        if all(o is None for o in pending[2]):
            self._pending = None
        assert out is not None
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.sizes}, bias={self.bias is not None}, packed={self._format()}"


class FusedPart(torch.nn.Module):
    """One of the Linears a FusedPackedLinear holds, called as that Linear was."""

    def __init__(self, fused: FusedPackedLinear, index: int) -> None:
        super().__init__()
        self.fused, self.index = fused, index
        self.in_features, self.out_features = fused.in_features, fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.output(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of the fused matrix"


def fused_outputs(x: torch.Tensor, *linears: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """Each of `linears` applied to `x`: one product where they are the parts of one fused
    matrix, in order; one each otherwise."""
    fused = getattr(linears[0], "fused", None)
    if (
        fused is not None
        and len(linears) == len(fused.sizes)
        and all(getattr(linear, "fused", None) is fused and linear.index == i for i, linear in enumerate(linears))
    ):  # type: ignore[union-attr]
        return fused(x)  # type: ignore[no-any-return]
    return tuple(linear(x) for linear in linears)


def _fuse_siblings(model: torch.nn.Module, fmt: str) -> int:
    """Replace each group of FUSED_SIBLINGS by FusedParts of one packed matrix; returns the count."""
    count = 0
    for parent in list(model.modules()):
        for names in FUSED_SIBLINGS:
            group = [getattr(parent, name, None) for name in names]
            if not all(_packable(child) for child in group):  # type: ignore[arg-type]
                continue
            if len({child.in_features for child in group}) != 1:  # type: ignore[union-attr]
                continue
            fused = FusedPackedLinear(group, fmt)  # type: ignore[arg-type]
            for index, name in enumerate(names):
                setattr(parent, name, FusedPart(fused, index))
            count += 1
    return count


def pack_linears(model: torch.nn.Module, fuse: bool = True, fmt: str = "mkl", head: str | None = None) -> int:
    """Replace every plain fp32 CPU Linear of `model` by a PackedLinear, or, with `fuse`, by a
    part of one packed matrix with its siblings (idempotent); returns how many of the model's
    Linear layers are packed, fused or not. `fmt` (FORMATS): MKL's fp32 layout, int8 (int8.py)
    or 4-bit groups (int4.py); `head`: another format for the model's output head
    (`get_output_embeddings`), whose error reaches the logits but no later layer."""
    if fmt != "mkl" or (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")):
        groups = _fuse_siblings(model, fmt) if fuse else 0
        targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if _packable(child)]
        output_head = getattr(model, "get_output_embeddings", lambda: None)()
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(cast(torch.nn.Linear, child), head if head is not None and child is output_head else fmt))
        if targets or groups:
            log.info(
                "repacked %d Linear weights into %s and %d groups of siblings into one matrix each",
                len(targets),
                "MKL's GEMM layout" if fmt == "mkl" else fmt,
                groups,
            )
    return sum(isinstance(m, (PackedLinear, FusedPart)) for m in model.modules())
