"""Where a batched decode step's time goes: its products, attention over the slotted cache,
the rotary, the norms, the rest (Python, dispatch and the small ops between them), and the
sampling after it, at several batch sizes, for each weight format, eager and compiled.

How: a real batch (the benchmark's chat prompts, prefilled and decoded a few steps, so the
rows are left-padded as they are in the engine) gives the shapes; each part is then timed on
its own over those shapes (CPU ops are synchronous, so a wall clock around them is exact), the
whole step is timed eager and compiled, and what the parts do not account for is the rest.
Attention is timed twice: over the padded cache, as the step computes it, and over each row's
own columns only, which shows what the padding costs.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .. import models
from ..engine import bf16, int8
from ..engine.fast_decode import _attend, compile_step, decode_step
from ..engine.kv import RunningBatch
from ..engine.packed import FusedPackedLinear, PackedLinear, pack_linears
from ..engine.prefill import prefill_batch
from ..engine.sampling import SamplingParams, sample_next
from .workload import chat_ids

DECODED = 24  # steps decoded before timing: the rows' lengths differ as they do in a running batch


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _batch(model: Any, tokenizer: Any, rows: int, pad_id: int) -> tuple[RunningBatch, torch.Tensor]:
    """The batch, and the logits of its last step."""
    pre = prefill_batch(model, chat_ids(tokenizer, rows), pad_id)
    batch = RunningBatch(fast_decode=True)
    batch.join(pre.kv, pre.mask, pre.positions, pre.logits.argmax(-1))
    logits = pre.logits
    for _ in range(DECODED):
        logits = batch.step(model)
        batch.next_tokens = logits.argmax(-1)
    return batch, logits


def _parts(model: Any, batch: RunningBatch, logits: torch.Tensor, rounds: int) -> dict[str, float]:
    """Each part of one step, timed alone on the batch's shapes (ms)."""
    inner, config = model.model, model.config
    rows = batch.size
    layers: list[Any] = batch.cache.layers  # type: ignore[union-attr]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    scale = inner.layers[0].self_attn.scaling
    products = [m for m in model.modules() if isinstance(m, (PackedLinear, FusedPackedLinear))]
    inputs = [torch.randn(rows, 1, m.in_features) for m in products]
    length = layers[0].length
    mask = batch.mask.bool()[:, None, None, :]
    q = torch.randn(rows, heads, 1, dim)
    real = batch.mask.sum(1).tolist()  # each row's own columns (the rest of its row is padding)
    x = torch.randn(rows, 1, config.hidden_size)
    norm = inner.layers[0].input_layernorm
    k = torch.randn(rows, kv_heads, 1, dim)
    positions = batch.positions[:, None]
    # (`logits`: the model's own next-token scores for these rows: random ones would be flat, as no model's are)
    greedy = [SamplingParams.build(0.0, 1.0, None)] * rows
    sampled = [SamplingParams.build(0.8, 0.95, i) for i in range(rows)]

    def attention(padded: bool) -> None:
        for layer in layers:
            kbuf, vbuf = layer.buffers
            if padded:
                _attend(q, kbuf[:, :, :length], vbuf[:, :, :length], mask, scale)
            else:
                for r, n in enumerate(real):
                    _attend(q[r : r + 1], kbuf[r : r + 1, :, length - n : length], vbuf[r : r + 1, :, length - n : length], None, scale)

    def rotary() -> None:
        cos, sin = inner.rotary_emb(x, positions)
        for _ in layers:
            apply_rotary_pos_emb(q, k, cos, sin)

    with torch.inference_mode():
        return {
            "products": _median_ms(lambda: [m(i) for m, i in zip(products, inputs)], rounds),
            "attention": _median_ms(lambda: attention(True), rounds),
            "attention_unpadded": _median_ms(lambda: attention(False), rounds),
            "rotary": _median_ms(rotary, rounds),
            "norms": _median_ms(
                lambda: [F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon) for _ in range(2 * len(layers) + 1)], rounds
            ),
            "sampling_greedy": _median_ms(lambda: sample_next(logits, greedy), rounds),
            "sampling_top_p": _median_ms(lambda: sample_next(logits, sampled), rounds),
            "padded_columns": float(length),
            "longest_row": float(max(real)),
        }


def _step_ms(model: Any, batch: RunningBatch, forward: Any, rounds: int) -> float:
    """One whole step (the new column is written and then dropped again, so every round sees the
    same batch)."""
    layers: list[Any] = batch.cache.layers  # type: ignore[union-attr]
    mask = torch.cat([batch.mask, batch.mask.new_ones((batch.size, 1))], dim=1)

    def step() -> None:
        decode_step(model, batch.next_tokens, batch.positions, [(layers, mask)], forward)
        for layer in layers:
            layer.advance(-1)

    with torch.inference_mode():
        return _median_ms(step, rounds)


def measure_profile(
    spec: str | None, formats: list[str], row_counts: list[int], rounds: int, compile_step_too: bool, log: Any = print
) -> list[dict[str, Any]]:
    """One row per weight format and batch size: each part's ms, the eager and compiled step."""
    out = []
    for fmt in formats:
        loaded = models.load(spec, "none")
        model, tokenizer = loaded.model, loaded.tokenizer
        pack_linears(model, fuse=True, fmt=fmt)
        compiled = compile_step(model) if compile_step_too else None
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for rows in row_counts:
            batch, logits = _batch(model, tokenizer, rows, pad_id)
            parts = _parts(model, batch, logits, rounds)
            eager = _step_ms(model, batch, None, rounds)
            after = _step_ms(model, batch, compiled, rounds) if compiled is not None else None
            accounted = parts["products"] + parts["attention"] + parts["rotary"] + parts["norms"]
            row = {
                "weights": fmt,
                "rows": rows,
                **{k: round(v, 2) for k, v in parts.items()},
                "rest": round(max(eager - accounted, 0.0), 2),
                "step_eager": round(eager, 2),
                "step_compiled": round(after, 2) if after is not None else None,
            }
            out.append(row)
            log(f"  {fmt:>4} x {rows:>2} rows: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("weights", "rows")))
        del model, loaded, compiled
        gc.collect()
    return out


Kernel = Callable[[torch.nn.Linear], Callable[[torch.Tensor], torch.Tensor]]  # a Linear prepared once -> its product of fp32 rows
ENGINE_FORMATS = {  # the engine's formats (packed.py), each as `--quant` uses it
    "mkl": "fp32 MKL-packed (engine, none)",
    "int8": "int8 weights and rows (engine, w8a8: torch._int_mm)",
    "int4": "int4 weight-only, bf16 rows (engine, q4: _weight_int4pack_mm_for_cpu)",
    "bf16": "bf16 oneDNN-packed (engine, bf16)",
}


def _bf16_linear(linear: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = linear.weight.bfloat16()
    return lambda x: F.linear(x.bfloat16(), weight).float()


def _int8_weight_only(linear: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    q, scale = int8.quantize_weight(linear.weight)
    return lambda x: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, scale.bfloat16()).float()


def _kernels() -> dict[str, Kernel]:
    kernels: dict[str, Kernel] = {
        "fp32 F.linear (transformers' fp32)": lambda linear: lambda x: F.linear(x, linear.weight),
        "bf16 F.linear (transformers' bf16)": _bf16_linear,
        "int8 weight-only, bf16 rows (torch _weight_int8pack_mm)": _int8_weight_only,
    }
    for fmt, name in ENGINE_FORMATS.items():
        if fmt != "bf16" or bf16.available():
            kernels[name] = lambda linear, fmt=fmt: PackedLinear(linear, fmt)  # type: ignore[misc]
    return kernels


def _time_kernel(linears: list[torch.nn.Linear], kernel: Kernel, row_counts: list[int], rounds: int) -> dict[str, float]:
    products = [kernel(linear) for linear in linears]
    times = {}
    for rows in row_counts:
        inputs = [torch.randn(rows, linear.in_features) for linear in linears]
        times[f"rows_{rows}"] = round(_median_ms(lambda: [product(x) for product, x in zip(products, inputs)], rounds), 2)  # noqa: B023  (called in this iteration)
    return times


def measure_kernels(spec: str | None, row_counts: list[int], rounds: int, log: Any = print) -> list[dict[str, Any]]:
    """The model's own weight matrices (every Linear, unfused) multiplied by 1, 16 and 32 rows
    in each kernel: the products of one decode step, ms (the median of `rounds`)."""
    loaded = models.load(spec, "none")
    linears = [m for m in loaded.model.modules() if type(m) is torch.nn.Linear]
    out = []
    with torch.inference_mode():
        for name, kernel in _kernels().items():
            try:
                row: dict[str, Any] = {"kernel": name, **_time_kernel(linears, kernel, row_counts, rounds)}
            except (RuntimeError, NotImplementedError) as exc:  # a kernel this CPU or build lacks
                row = {"kernel": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
            out.append(row)
            log(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "kernel"))
            gc.collect()
    return out
