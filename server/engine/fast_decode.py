"""One decode step for the running batch of a Llama-family model (Llama, Qwen2), without going
through transformers' forward.

Why by hand: a decode step multiplies a few rows by every weight, and on a CPU transformers'
forward adds a fixed cost around those products (module calls, attention-interface dispatch, a
4-D mask built per step and per layer group) that is a large share of a small model's step
(`tandem bench --sections ceiling` shows both, and the README's benchmark section quotes them).
This step calls the same modules' weights through torch's functional ops, uses transformers' own
rotary embedding, builds the padding mask once per step, and writes the new keys and values into
the running batch's slotted cache in place. `tests/engine/test_engine.py` checks that its logits and
cache match transformers' forward at 1 and at several left-padded rows; `tandem bench`
(`--sections ceiling`) measures both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from . import bf16
from .packed import FusedPart, PackedLinear, as_decode_steps, fused_outputs, let_inductor_call_packed_linears

SUPPORTED_TYPES = ("llama", "qwen2")

log = logging.getLogger("tandem.engine")


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
        projections = (
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        )
        if any(
            type(p) not in (torch.nn.Linear, PackedLinear, FusedPart) for p in projections
        ):  # bitsandbytes layers keep their own forward
            return False
    return type(model.lm_head) in (torch.nn.Linear, PackedLinear)


StepFn = Callable[..., torch.Tensor]  # forward_rows or a compiled copy of it


# row-columns of attention a split of the batch must save: each reads every layer's key and value
# (a few microseconds here), and the split step runs eager, some 10 ms slower than the compiled one
MIN_SPLIT_SAVING = 4096
COMPILED_ROWS = bf16.ROW_BLOCK  # the most rows the compiled batched step takes (one block of bf16 products: no guard on a block count)


@dataclass
class Run:
    """Rows [start, stop) of the batch that attend over their own cache buffers (per layer,
    [stop - start, kv_heads, capacity, head_dim]), from column `first` (the earliest any of them
    uses) to `length` (the new token's column) inclusive; `mask` [rows, 1, 1, length + 1]."""

    start: int
    stop: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int
    first: int
    mask: torch.Tensor | None


@dataclass
class Chunk:
    """A piece of a prompt being prefilled (chunked.py): tokens [1, S] at positions [start,
    start + S), whose keys and values go into columns [start, start + S) of the prompt's own
    buffers (per layer [1, kv_heads, capacity, head_dim]), each attending to the columns
    before it and to itself. `logits` [1, V]: its last position's, once it has run."""

    tokens: torch.Tensor
    start: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # causal(), where made already (the compiled step takes it made)

    @property
    def width(self) -> int:
        return self.tokens.shape[1]  # type: ignore[no-any-return]  # (no int(): under torch.compile a symbolic size stays one)

    @property
    def end(self) -> int:
        return self.start + self.width

    def after(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A step's tokens and positions [B] with the chunk's S after them [B + S]: its
        positions as further rows of one position each."""
        at = torch.arange(self.start, self.end, device=positions.device)
        return torch.cat([tokens, self.tokens[0]]), torch.cat([positions, at])

    def causal(self) -> torch.Tensor:
        """[1, 1, S, end]: each position sees the columns before it and itself."""
        if self.mask is None:
            ones = torch.ones((self.width, self.end), dtype=torch.bool, device=self.tokens.device)
            self.mask = ones.tril(diagonal=self.start)[None, None]
        return self.mask


Lane = tuple[list[Any], torch.Tensor]  # one cache's SlottedLayer per decoder layer, and its mask [rows, T] (new column included)


@torch.inference_mode()
def decode_step(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    lanes: list[Lane],
    forward: StepFn | None = None,
    chunk: Chunk | None = None,
) -> torch.Tensor:
    """tokens, positions: [B]; lanes: the batch's caches, each over a run of its rows in order
    (kv.RunningBatch: a row far longer than the others gets a cache of its own), updated in
    place; each mask includes the new column, 0 where a row is left-padded. `forward` replaces
    `forward_rows` (the compiled step, `compile_step`) for one cache of one unpadded row or of 2
    to COMPILED_ROWS rows. `chunk`: a piece of a prompt prefilled in the same pass (eager; its
    logits go into it). Returns the logits [B, V] for each row's next token."""
    rows = tokens.shape[0]
    for layers, _ in lanes:
        for cache in layers:  # growing the buffers stays outside the (possibly compiled) forward
            cache.reserve(1)
    runs = _runs(lanes) if len(lanes) > 1 or rows > 1 or chunk is not None else None
    beside = getattr(forward, "beside", None)
    if chunk is not None and runs is not None and len(runs) == 1 and beside is not None and beside.takes(rows, chunk.width, chunk.start):
        run = runs[0]
        assert run.mask is not None and run.first == 0
        both, at = chunk.after(tokens, positions)
        out = beside(model, both, at, run.keys, run.values, run.length, run.mask, chunk.keys, chunk.values, chunk.start, chunk.causal())
        logits, chunk.logits = out[:rows], out[rows:]
    elif runs is not None and (len(runs) > 1 or chunk is not None):  # rows of very different lengths, or a chunk beside: eager
        logits = forward_runs(model, tokens, positions, runs, chunk)
    else:
        layers, mask = lanes[0]
        length = layers[0].length
        # One boolean mask for every layer; none at all for one unpadded row. Several rows always
        # pass one, padded or not, so that the compiled step needs one graph for them, not two.
        attn_mask = None if rows == 1 and bool(mask.all()) else mask.bool()[:, None, None, :]
        keys = [cache.buffers[0] for cache in layers]
        values = [cache.buffers[1] for cache in layers]
        if forward is None or (rows == 1 and attn_mask is not None) or rows > COMPILED_ROWS:  # shapes the compiled step was not made for
            forward = forward_rows
        elif not (tokens.is_inference() and positions.is_inference()):  # what the compiled graph was made for (and guards on)
            tokens, positions = tokens.clone(), positions.clone()
        logits = forward(model, tokens, positions, keys, values, length, attn_mask)
    for layers, _ in lanes:
        for cache in layers:
            cache.advance(1)
    return logits


def _runs(lanes: list[Lane]) -> list[Run]:
    """Each lane as one run of rows, or two where its rows are of very different lengths
    (`padding_split`)."""
    runs: list[Run] = []
    start = 0
    for layers, mask in lanes:
        length, size = layers[0].length, mask.shape[0]
        keys = [cache.buffers[0] for cache in layers]
        values = [cache.buffers[1] for cache in layers]
        attn_mask = mask.bool()[:, None, None, :]
        split = padding_split(mask) if size > 1 else None
        cuts = [(0, size, 0)] if split is None else [(0, split[0], split[1]), (split[0], size, split[2])]
        for a, b, first in cuts:
            rows_keys = keys if (a, b) == (0, size) else [k[a:b] for k in keys]
            rows_values = values if (a, b) == (0, size) else [v[a:b] for v in values]
            runs.append(Run(start + a, start + b, rows_keys, rows_values, length, first, attn_mask[a:b]))
        start += size
    return runs


def padding_split(mask: torch.Tensor) -> tuple[int, int, int] | None:
    """Where to cut a cache's rows in two runs so that each attends only over the columns its
    own rows use, when that saves at least half of the attention over the padded cache (a long
    conversation beside short ones: every short row would otherwise read the long one's
    columns, in padding, at every step) and at least MIN_SPLIT_SAVING row-columns (a split
    step runs eager, where one cache's rows take the compiled one): (r, first column of rows
    [0, r), first column of rows [r, B)), or None when the rows are of similar lengths."""
    rows, width = mask.shape
    first = mask.int().argmax(dim=1)  # each row's first real column (rows are left-padded)
    before = first.cummin(dim=0).values  # the earliest first column among rows [0, r]
    after = first.flip(0).cummin(dim=0).values.flip(0)  # ... among rows [r, B)
    cut = torch.arange(1, rows, device=mask.device)
    cost = cut * (width - before[:-1]) + (rows - cut) * (width - after[1:])
    best = int(cost.argmin())
    saved = rows * width - int(cost[best])
    if saved * 2 < rows * width or saved < MIN_SPLIT_SAVING:
        return None
    return int(cut[best]), int(before[best]), int(after[best + 1])


def forward_rows(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    length: int,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The decoder on one new token per row. Writes each layer's new key and value into column
    `length` of its buffers and attends over columns [0, length]. A pure function of its inputs
    (no Python state changes), so that torch.compile can take it whole."""
    rows = tokens.shape[0]
    x = _decoder(model, tokens.view(rows, 1), positions.view(rows, 1), keys, values, length, attn_mask)
    return model.lm_head(x[:, -1])  # type: ignore[no-any-return]


def forward_runs(model: Any, tokens: torch.Tensor, positions: torch.Tensor, runs: list[Run], chunk: Chunk | None = None) -> torch.Tensor:
    """`forward_rows` with each run of rows writing into and attending over its own buffers and
    columns: the products for every row at once, the attention run by run. With `chunk`, its
    positions go through the same products as further rows of one position each (as decode
    steps compute them: a chunk's bits are the same beside a step as alone), its attention over
    its own buffers; its logits go into it.

    Why a chunk beside the step rather than between two: every product reads each weight once
    for the step's rows and the chunk's together, and the pass's fixed cost is paid once, so a
    stream waits for the chunk's attention and its share of the products, not for a whole
    second pass (`tandem bench`, mixed: the long prompt's stall)."""
    rows = tokens.shape[0]
    if chunk is not None:
        tokens, positions = chunk.after(tokens, positions)
    x = _decoder(model, tokens[:, None], positions[:, None], [], [], 0, None, runs=runs, chunk=chunk)
    logits = model.lm_head(x[:, -1] if chunk is None else torch.cat([x[:rows, -1], x[-1:, -1]]))
    if chunk is not None:
        chunk.logits = logits[rows:]
    return logits[:rows]  # type: ignore[no-any-return]


def forward_beside(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    length: int,
    attn_mask: torch.Tensor,
    chunk_keys: list[torch.Tensor],
    chunk_values: list[torch.Tensor],
    chunk_start: int,
    causal: torch.Tensor,
) -> torch.Tensor:
    """`forward_runs` for one cache of B rows and a chunk of S positions, as plain arguments, so
    that torch.compile can take it whole (as `forward_rows`): tokens and positions [B + S], the
    rows' and then the chunk's; attn_mask [B, 1, 1, length + 1]; causal [1, 1, S, chunk_start +
    S] (`Chunk.causal`). Returns the logits [B + 1, V]: each row's, then the chunk's last
    position's."""
    width = causal.shape[2]
    rows = tokens.shape[0] - width
    run = Run(0, rows, keys, values, length, 0, attn_mask)
    chunk = Chunk(tokens[None, rows:], chunk_start, chunk_keys, chunk_values, mask=causal)
    x = _decoder(model, tokens[:, None], positions[:, None], [], [], 0, None, runs=[run], chunk=chunk)
    return model.lm_head(torch.cat([x[:rows, -1], x[-1:, -1]]))  # type: ignore[no-any-return]


def forward_block(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    length: int,
    attn_mask: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """`forward_rows` on S new tokens per row at once (speculative verification): tokens and
    positions [B, S]; writes the keys and values into columns [length, length + S) of the
    buffers; attn_mask [B, 1, S, length + S] (the row's mask, then causal within the block).
    Returns the logits of the flattened [B * S] positions listed in `keep` (all when None), so
    that lm_head, the largest product, runs only on the positions the caller reads. Its
    products are those of S decode steps (`as_decode_steps`)."""
    with as_decode_steps():
        x = _decoder(model, tokens, positions, keys, values, length, attn_mask)
        x = x.reshape(-1, x.shape[-1])
        return model.lm_head(x if keep is None else x[keep])  # type: ignore[no-any-return]


def forward_chunk(model: Any, chunk: Chunk) -> torch.Tensor:
    """One chunk of a prompt being prefilled (chunked.py), in a pass of its own: its keys and
    values written into its columns of its buffers, each position attending to the columns
    before it and to itself, all queries in one SDPA call per layer (grouped-query heads read
    as they are: transformers' forward copies them to every query head first, which on a long
    prefix is most of a chunk's time). Returns the last position's logits [1, V]."""
    positions = torch.arange(chunk.start, chunk.end, device=chunk.tokens.device)[None, :]
    x = _decoder(model, chunk.tokens, positions, chunk.keys, chunk.values, chunk.start, chunk.causal(), per_query=False)
    return model.lm_head(x[:, -1])  # type: ignore[no-any-return]


def forward_prompts(
    model: Any,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    every_position: bool = False,
) -> torch.Tensor:
    """Whole prompts in one pass (prefill.py): tokens [B, T], row r's prompt in its first
    lengths[r] columns and padding after it; writes the keys and values into columns [0, T) of
    the buffers, in the same places. Attention is causal, over each prompt's own columns
    (`_attend_prompts`). Returns the logits at each row's last prompt token [B, V], or at every
    position [B, T, V].

    Why padding on the right: each row's tokens then sit in the columns they take alone, so a
    prompt's keys and logits are the bits it gets prefilled alone (left-padded, its sums ran in
    other vector lanes), and products a row at a time give the same bits in any batch. Why not
    transformers' forward: its mask and attention dispatch, its five-op norms and its grouped
    heads copied to every query head cost more than the products on a batch of chat prompts
    (`tandem bench`, throughput: time to first token)."""
    rows, width = tokens.shape
    positions = torch.arange(width, device=tokens.device).expand(rows, width)
    x = _decoder(model, tokens, positions, keys, values, 0, None, prompts=lengths.tolist())
    if not every_position:
        x = x[torch.arange(rows, device=x.device), lengths - 1]
    return model.lm_head(x)  # type: ignore[no-any-return]


def block_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The boolean attention mask [B, 1, S, T + S] for `forward_block`: each of a row's S new
    tokens sees the row's mask [B, T] (holes included) and the block's tokens up to itself."""
    rows, t = mask.shape
    causal = torch.ones((width, width), dtype=torch.bool, device=mask.device).tril()
    return torch.cat([mask.bool()[:, None, None, :].expand(rows, 1, width, t), causal.expand(rows, 1, width, width)], dim=-1)


def _decoder(
    model: Any,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    length: int,
    attn_mask: torch.Tensor | None,
    per_query: bool = True,
    runs: list[Run] | None = None,
    prompts: list[int] | None = None,
    chunk: Chunk | None = None,
) -> torch.Tensor:
    """The decoder layers and final norm on tokens [B, S] at positions [B, S]; [B, S, hidden].
    Several new tokens per row attend query by query (`_attend_each`) unless `per_query` is off.
    With `runs` (one token per row), each run writes into and reads its own buffers instead of
    keys and values; with `chunk` as well, tokens [B + S, 1] are the B rows' tokens and then the
    chunk's S, the rows attending run by run and the chunk over its own buffers.
    `prompts` (a cache empty before them, no mask): row r holds a prompt in its first prompts[r]
    positions, each attending to itself and the ones before it (`_attend_prompts`)."""
    inner = model.model
    rows, width = tokens.shape
    causal = chunk.causal() if chunk is not None else None
    x = inner.embed_tokens(tokens)  # [B, S, hidden]
    cos, sin = inner.rotary_emb(x, positions)
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        h = _rms_norm(layer.input_layernorm, x)
        q, k, v = (p.view(rows, width, -1, attn.head_dim).transpose(1, 2) for p in fused_outputs(h, attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if runs is not None:
            o = torch.cat([_attend_run(run, i, q, k, v, attn.scaling) for run in runs])
            if chunk is not None:  # its S positions are the last S rows, [S, heads, 1, D]: as [1, heads, S, D]
                b = rows - chunk.width
                qc, kc, vc = (t[b:].transpose(0, 2) for t in (q, k, v))
                oc = _attend_chunk(chunk, i, qc, kc, vc, attn.scaling, causal)
                o = torch.cat([o, oc.transpose(0, 2)])
        else:
            kbuf, vbuf = keys[i], values[i]
            kbuf[:, :, length : length + width] = k
            vbuf[:, :, length : length + width] = v
            if prompts is not None:
                o = _attend_prompts(q, kbuf, vbuf, prompts, attn.scaling)
            elif width == 1 or not per_query:
                o = _attend(q, kbuf[:, :, : length + width], vbuf[:, :, : length + width], attn_mask, attn.scaling)
            else:
                o = _attend_each(q, kbuf, vbuf, length, attn_mask, attn.scaling)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(rows, width, -1))
        h = _rms_norm(layer.post_attention_layernorm, x)
        gate, up = fused_outputs(h, mlp.gate_proj, mlp.up_proj)
        x = x + mlp.down_proj(mlp.act_fn(gate) * up)
    return _rms_norm(inner.norm, x)


def compile_step(model: Any, beside: bool = True) -> "CompiledStep":
    """`forward_rows` compiled by torch.compile (inductor), warmed up on scratch buffers so that
    the first real call finds it ready: one graph for a single unpadded row, one for 2 to
    COMPILED_ROWS rows with a padding mask (both symbolic in the cache's length and capacity,
    the second in its row count too); and, with `beside` (an engine that chunks prompts),
    `forward_beside`, the step with a prompt's chunk in its pass (`CompiledStep.beside`),
    symbolic in the rows, the chunk's width and start (and once more for a first chunk).

    Why: a step's products read every weight once, and the ~40 small ops per layer around them
    (norms, rotary, cache writes, attention) each pay Python and dispatch time, a large share
    of an eager step at one row and at many. Inductor fuses them into a few C++ kernels.
    Compiling takes minutes of CPU, so the engine does it in the background and keeps the eager
    step until it is ready. `tandem bench` (profile, ceiling, quantization) measures both; the
    chunk's step is the long prompt's stall in its mixed section."""
    let_inductor_call_packed_linears()
    compiled = CompiledStep(torch.compile(forward_rows, dynamic=True), torch.compile(forward_beside, dynamic=True) if beside else None)
    config = model.config
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    param = next(model.parameters())

    def buffers(rows: int, capacity: int) -> list[torch.Tensor]:
        return [param.new_zeros((rows, kv_heads, capacity, head_dim)) for _ in model.model.layers]

    with torch.inference_mode():
        # two sizes of each shape, so that they are symbolic from the start
        for rows, capacity, length in ((1, 37, 20), (1, 75, 41), (3, 37, 20), (5, 75, 41)):
            tokens = torch.zeros((rows,), dtype=torch.long, device=param.device)
            mask = None if rows == 1 else torch.ones((rows, 1, 1, length + 1), dtype=torch.bool, device=param.device)
            if mask is not None:
                mask[0, ..., :3] = False
            compiled.compiled(model, tokens, tokens + length, buffers(rows, capacity), buffers(rows, capacity), length, mask)
        if compiled.beside is not None:
            _warm_chunk_step(model, compiled.beside, buffers)
    return compiled


def _warm_chunk_step(model: Any, chunk_step: "ChunkStep", buffers: Callable[[int, int], list[torch.Tensor]]) -> None:
    """`compile_step`'s warm-up of the chunk step: two sizes of each shape, and a chunk at column
    0 (a prompt's first: torch specialises a 0, so a graph of its own)."""
    device = next(model.parameters()).device
    for rows, width, start in ((3, 4, 30), (5, 6, 61), (3, 4, 0)):
        tokens = torch.zeros((rows + width,), dtype=torch.long, device=device)
        mask = torch.ones((rows, 1, 1, 21), dtype=torch.bool, device=device)
        # a chunked prompt's buffers: views of its first row and columns, in buffers with room for more (chunked.py)
        keys, values = ([b[:1, :, : start + 2 * width] for b in buffers(3, start + 3 * width)] for _ in range(2))
        chunk = Chunk(tokens[None, rows:], start, keys, values)
        step = (tokens, tokens + 20, buffers(rows, 37), buffers(rows, 37), 20, mask)
        chunk_step.compiled(model, *step, chunk.keys, chunk.values, start, chunk.causal())


class _NoRecompile:
    """A compiled forward that must never compile again on the worker thread: a recompile there
    would stall every request for a minute. Any call that would need one (or that fails) runs
    `eager` instead, and so do all later calls."""

    def __init__(self, compiled: StepFn, eager: StepFn) -> None:
        self.compiled, self.eager = compiled, eager
        self.failed: str | None = None
        self.calls = 0  # steps the compiled forward ran

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.failed is None:
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    logits = self.compiled(*args)
                self.calls += 1
                return logits
            except Exception as exc:  # the eager step computes the same thing; writing the same KV column twice is harmless
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("the compiled %s cannot run this call (%s); eager from now on", self.eager.__name__, self.failed)
        return self.eager(*args)


class ChunkStep(_NoRecompile):
    """The compiled `forward_beside`."""

    def takes(self, rows: int, width: int, start: int) -> bool:
        """Whether it was made for these shapes: sizes and offsets of 0 and 1 are never symbolic
        in a compiled graph (torch specialises them; a chunk at column 0 has a graph of its own),
        and bf16's products are compiled for one block of rows (COMPILED_ROWS, as the plain step)."""
        return self.failed is None and rows > 1 and width > 1 and start != 1 and rows + width <= COMPILED_ROWS


class CompiledStep(_NoRecompile):
    """The compiled `forward_rows`, and `beside`, the compiled `forward_beside` (where there is
    one): each falls back to its eager function on its own."""

    def __init__(self, compiled: StepFn, beside: StepFn | None) -> None:
        super().__init__(compiled, forward_rows)
        self.beside = ChunkStep(beside, forward_beside) if beside is not None else None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v; q: [B, heads, S, D], k and v: [B, kv_heads, T, D], attn_mask:
    [B, 1, S, T] (False where a query must not look) or None (one query per row, nothing masked).

    Eager: torch's SDPA, one fused kernel. Compiled (one unpadded row): the same sums written as
    broadcast products and reductions, which inductor fuses into its own loops with the rotary
    and the cache writes around them. Why: inductor cannot fuse SDPA and calls it as an opaque
    op, about 70 us each on CPU at one query, 30 times a step on SmolLM2-135M; written out, the
    compiled step's time outside its products fell from 4.3 to 1.7 ms (alternating rounds in one
    process). `tandem bench --sections ceiling` measures the compiled step against the eager one,
    and `tests/engine/test_engine.py` checks their logits against each other."""
    if attn_mask is not None or not torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    rows, heads, _, dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.view(rows, kv_heads, heads // kv_heads, 1, dim)  # query heads i*g .. i*g+g-1 share kv head i (as transformers' repeat_kv)
    scores = (grouped * k[:, :, None]).sum(-1) * scale  # [B, kv_heads, g, T]
    out = (torch.softmax(scores, dim=-1)[..., None] * v[:, :, None]).sum(-2)  # [B, kv_heads, g, D]
    return out.view(rows, heads, 1, dim)


def _attend_run(run: Run, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """A run's rows of q, k and v [B, heads, 1, D]: their key and value written into column
    `run.length` of its buffers for `layer`, their attention over its columns [first, length]."""
    kbuf, vbuf, end = run.keys[layer], run.values[layer], run.length + 1
    kbuf[:, :, run.length : end] = k[run.start : run.stop]
    vbuf[:, :, run.length : end] = v[run.start : run.stop]
    mask = None if run.mask is None else run.mask[..., run.first : end]
    return _attend(q[run.start : run.stop], kbuf[:, :, run.first : end], vbuf[:, :, run.first : end], mask, scale)


def _attend_chunk(
    chunk: Chunk, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: torch.Tensor | None
) -> torch.Tensor:
    """A chunk's q, k and v [1, heads, S, D]: its keys and values written into its columns of its
    buffers for `layer`, its attention over the columns up to each position (as forward_chunk's)."""
    kbuf, vbuf = chunk.keys[layer], chunk.values[layer]
    kbuf[:, :, chunk.start : chunk.end] = k
    vbuf[:, :, chunk.start : chunk.end] = v
    return _attend(q, kbuf[:, :, : chunk.end], vbuf[:, :, : chunk.end], causal, scale)


def _attend_prompts(q: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, prompts: list[int], scale: float) -> torch.Tensor:
    """Causal attention for prompts [B, heads, S, D], row r's in its first prompts[r] positions
    (the rest padding, whose output stays zero), one SDPA call per prompt over its own columns.
    Why per prompt: SDPA blocks its queries and keys by the sequence's length, and a block
    boundary moves a sum into other vector lanes: one call over the padded batch gave a short
    prompt beside a long one other bits than it gets alone."""
    gqa = kbuf.shape[1] != q.shape[1]
    if len(set(prompts)) == 1 and prompts[0] == q.shape[2]:
        return F.scaled_dot_product_attention(
            q, kbuf[:, :, : prompts[0]], vbuf[:, :, : prompts[0]], is_causal=True, scale=scale, enable_gqa=gqa
        )
    out = q.new_zeros(q.shape)
    for row, n in enumerate(prompts):
        k, v = kbuf[row : row + 1, :, :n], vbuf[row : row + 1, :, :n]
        out[row : row + 1, :, :n] = F.scaled_dot_product_attention(
            q[row : row + 1, :, :n], k, v, is_causal=True, scale=scale, enable_gqa=gqa
        )
    return out


def _attend_each(
    q: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int, attn_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """`_attend` for a block of S queries [B, heads, S, D], one query at a time over the columns
    it may see, with the one-row step's kernel.

    Why: SDPA over S queries at once takes other GEMM kernels than at one query, which round the
    last bits differently. Under int8 products (int8.py) a last-bit difference can move an input
    element to the next int8 step, so verifying a speculative block in one call gave other
    tokens than one-row decoding; per query, the verified logits are the one-row step's, bit for
    bit (tests/engine/test_speculative.py)."""
    width = q.shape[2]
    outs = []
    for i in range(width):
        end = length + i + 1
        mask = None if attn_mask is None else attn_mask[:, :, i : i + 1, :end]
        outs.append(_attend(q[:, :, i : i + 1], kbuf[:, :, :end], vbuf[:, :, :end], mask, scale))
    return torch.cat(outs, dim=2)


def _rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """torch's fused RMSNorm (one op instead of five) where it computes exactly what transformers'
    module does: in fp32. Other dtypes keep the module, which rounds before scaling by the weight."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm(x)  # type: ignore[no-any-return]
