"""KV storage for the running batch: rows that join, grow one token per step and leave.

Why not transformers' `DynamicLayer` as it is: it grows by `torch.cat`, which copies the whole
cache of every layer at every step (O(batch x length) bytes per token). `SlottedLayer` keeps
spare capacity and writes the new token in place, so a decode step copies nothing; it only
copies when rows join or leave, which happens once per request, not once per token.

Rows are left-padded to one length; `RunningBatch.mask` says which columns are real. After a
speculative step (`verify`, `accept`) a row that accepted fewer drafts than another has holes:
zero columns between real ones, where its rejected drafts were written. Attention reads the
mask as it is, positions are per row, and `keep` drops the columns no remaining row uses.
"""

from __future__ import annotations

import math
import mmap

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .fast_decode import Chunk, StepFn, block_mask, decode_step, forward_block

GROW = 64  # spare columns allocated at once (at least); a decode step writes in place until they run out
LAZY_BYTES = 1 << 20  # buffers this large come zeroed by the OS (`zeroed`)


LAZY_SPARE = 2048  # spare columns, at least, of a CPU cache buffer (`zeroed`: free until written)


def spare(length: int, device: torch.device | None = None) -> int:
    """Spare columns for a cache of `length`: a quarter of it, at least GROW, so that a long
    batch (whose every growth copies every row's columns) grows rarely; on a CPU at least
    LAZY_SPARE. Why: a buffer there is fresh anonymous memory, whose pages cost nothing until
    written, and a growth writes every row's columns into new pages at once, faults that
    doubled the step they fell in (`tandem bench`, mixed: the long prompt's stall). Written a
    column a step, the pages fault a few at a time instead."""
    least = LAZY_SPARE if device is not None and device.type == "cpu" else GROW
    return max(least, length // 4)


def zeroed(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A zero tensor of `like`'s dtype and device. A large CPU buffer is fresh anonymous memory,
    which the OS hands out zero: a page is only written (and counts in the resident set) once
    something is written into it, and a short row's padding beside a long row never is.
    `torch.zeros` writes every byte first: 9 rows beside a 4,000-token row are 1.7 GB over the
    60 buffers, which stalled every stream for a dozen decode steps when the long row joined."""
    count = math.prod(shape)
    size = count * like.element_size()
    if like.device.type != "cpu" or size < LAZY_BYTES:
        return like.new_zeros(shape)
    return torch.frombuffer(mmap.mmap(-1, size), dtype=like.dtype, count=count).view(shape)  # (the tensor keeps the mapping alive)


def spare_rows(rows: int) -> int:
    """Row slots beyond `rows` in a cache buffer, where rows that join later are written in
    place (the OS backs a slot with memory only once it is written: `zeroed`)."""
    return max(4, rows // 2)


class SlottedLayer(DynamicLayer):
    """One layer's keys/values, [B, H, T, D], in a buffer with spare capacity along T (written
    in place one token a step) and spare row slots (rows joining in place, `append`)."""

    keys: torch.Tensor  # (set from the first moment: never None, unlike DynamicLayer's)
    values: torch.Tensor

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        length = keys.shape[-2]
        self._hold(self._alloc((keys,), length), self._alloc((values,), length), keys.shape[0], length)

    @classmethod
    def over(cls, kbuf: torch.Tensor, vbuf: torch.Tensor, rows: int, length: int) -> SlottedLayer:
        """A layer that holds buffers already written (rows [0, rows), columns [0, length)), as
        they are: a chunked prompt's, made with a cache's room (chunked.py), which a copy into
        fresh memory made a stall of its own when the prompt joined."""
        layer = cls.__new__(cls)
        DynamicLayer.__init__(layer)
        layer._hold(kbuf, vbuf, rows, length)
        layer.shared = True  # (the prefix cache may hold the prompt's columns too)
        return layer

    @classmethod
    def stacked(cls, keys: tuple[torch.Tensor, ...], values: tuple[torch.Tensor, ...], length: int) -> SlottedLayer:
        """One layer over the rows of several caches ([b_i, H, t_i, D] each), left-padded to
        `length` columns: one buffer written once. (Padding each, concatenating them and then
        copying into a buffer with spare columns went over every byte three times, which a
        long prompt joining short rows paid in stalled steps.)"""
        layer = cls.__new__(cls)
        DynamicLayer.__init__(layer)
        layer._hold(cls._alloc(keys, length), cls._alloc(values, length), sum(k.shape[0] for k in keys), length)
        return layer

    def _hold(self, kbuf: torch.Tensor, vbuf: torch.Tensor, rows: int, length: int) -> None:
        self.shared = False  # whether the first row's columns may be read elsewhere: it is never moved over
        self.dtype, self.device, self.is_initialized = kbuf.dtype, kbuf.device, True
        self._kbuf, self._vbuf, self._rows, self._length = kbuf, vbuf, rows, length
        self._refresh()

    @staticmethod
    def _alloc(parts: tuple[torch.Tensor, ...], length: int, more: int = 0) -> torch.Tensor:
        """The rows of `parts` stacked, each right-aligned at column `length`, in a buffer with
        `more` + spare(length) columns beyond it and spare_rows row slots after them."""
        first = parts[0]
        rows = sum(part.shape[0] for part in parts)
        buf = zeroed((rows + spare_rows(rows), first.shape[1], length + more + spare(length, first.device), first.shape[3]), first)
        row = 0
        for part in parts:
            buf[row : row + part.shape[0], :, length - part.shape[2] : length] = part
            row += part.shape[0]
        return buf

    def _refresh(self) -> None:
        self.keys = self._kbuf[: self._rows, :, : self._length]
        self.values = self._vbuf[: self._rows, :, : self._length]

    @property
    def length(self) -> int:
        return self._length

    @property
    def buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' whole key and value buffers, spare columns included (the fast step writes into them)."""
        return self._kbuf[: self._rows], self._vbuf[: self._rows]

    def room(self, rows: int, length: int) -> bool:
        """Whether `rows` more rows of at most `length` columns can be written in place."""
        return self._rows + rows <= self._kbuf.shape[0] and length <= self._length

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write rows [b, H, t, D] into the next row slots, right-aligned at the cache's length
        (their columns before it are masked: whatever a slot held there stays unread)."""
        rows, t = keys.shape[0], keys.shape[2]
        self._kbuf[self._rows : self._rows + rows, :, self._length - t : self._length] = keys
        self._vbuf[self._rows : self._rows + rows, :, self._length - t : self._length] = values
        self._rows += rows
        self._refresh()

    def compact(self, rows: list[int]) -> None:
        """Keep only `rows` (ascending), moving each down to its new slot in place: only rows
        after the first one dropped are copied, and nothing is allocated."""
        for slot, row in enumerate(rows):
            if slot != row:
                self._kbuf[slot, :, : self._length] = self._kbuf[row, :, : self._length]
                self._vbuf[slot, :, : self._length] = self._vbuf[row, :, : self._length]
        self._rows = len(rows)
        self._refresh()

    def reserve(self, n: int) -> None:
        """Make room for n more columns, and keep one spare beyond them: the compiled
        step was traced on buffers longer than what it attends over, and inductor guards on
        that (a step whose slice were the whole buffer would need a compile of its own)."""
        if self._length + n >= self._kbuf.shape[-2]:
            self._kbuf = self._alloc((self.keys,), self._length, n)
            self._vbuf = self._alloc((self.values,), self._length, n)
            self.shared = False

    def advance(self, n: int) -> None:
        """Count n columns written into the buffers as part of the cache."""
        self._length += n
        self._refresh()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object):  # type: ignore[override]
        n = key_states.shape[-2]
        self.reserve(n)
        self._kbuf[: self._rows, :, self._length : self._length + n] = key_states
        self._vbuf[: self._rows, :, self._length : self._length + n] = value_states
        self.advance(n)
        return self.keys, self.values


def pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Prepend `n` zero columns along `dim`."""
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


LANE_COLUMNS = 1024  # a row this long (or rows beside it) may get a cache of its own (RunningBatch.join)
LANE_RATIO = 4  # ... when one side is this many times the other's length
MAX_LANES = 4


class Lane:
    """Rows of the running batch that share one cache, left-padded to one length."""

    def __init__(self, layers: list[SlottedLayer], mask: torch.Tensor) -> None:
        self.layers = layers
        self.mask = mask  # [b, T]; 1 = real token, 0 = left pad (or a hole)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.layers]

    def stacked(self, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> Lane:
        """This lane with rows (kv: per layer [b, H, t, D], mask [b, t]) after its own: written
        into its row slots where they fit (no longer than its cache, and slots left), else one
        new cache."""
        old_t, new_t = self.width, mask.shape[1]
        if all(layer.room(mask.shape[0], new_t) for layer in self.layers):
            for layer, (k, v) in zip(self.layers, kv):
                layer.append(k, v)
            self.mask = torch.cat([self.mask, pad_left(mask, old_t - new_t, 1)])
            return self
        t = max(old_t, new_t)
        layers = [SlottedLayer.stacked((ok, nk), (ov, nv), t) for (ok, ov), (nk, nv) in zip(self.kv(), kv)]
        return Lane(layers, torch.cat([pad_left(self.mask, t - old_t, 1), pad_left(mask, t - new_t, 1)]))

    def kept(self, rows: list[int]) -> Lane:
        """Only `rows` (in that order), without the columns that became padding (or holes) for all of them."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[idx]
        used = mask.bool().any(0)
        lead = int((mask.cumsum(1) == 0).sum(1).min())  # leading pad columns shared by all rows
        shared = rows[0] != 0 and any(layer.shared for layer in self.layers)
        if len(rows) > 1 and bool(used[lead:].all()) and lead <= self.width // 4 and not shared:
            # in place: the rows after a dropped one move down (a few leading pad columns stay, masked)
            for layer in self.layers:
                layer.compact(rows)
            self.mask = mask
            return self
        if bool(used[lead:].all()):
            return Lane([SlottedLayer(k[idx, :, lead:], v[idx, :, lead:]) for k, v in self.kv()], mask[:, lead:])
        # speculation left holes that no kept row uses (always so for a row left alone: its compiled step needs none)
        cols = used.nonzero().view(-1)
        return Lane([SlottedLayer(k[idx][:, :, cols], v[idx][:, :, cols]) for k, v in self.kv()], mask[:, cols])


def apart(a: int, b: int) -> bool:
    """Whether caches of a and b columns are better held apart than padded into one: one of
    them long, and several times the other's length."""
    return max(a, b) >= LANE_COLUMNS and max(a, b) >= LANE_RATIO * min(a, b)


class RunningBatch:
    """The sequences decoding together: their KV caches, attention masks, positions and next
    inputs. Rows are held in lanes, each a cache of rows left-padded to one length: a row far
    longer (or shorter) than the others gets a lane of its own, so that it joins and leaves
    without rewriting the others' caches or theirs, and no row attends over its padding. A
    decode step multiplies every row at once and attends lane by lane."""

    def __init__(self, fast_decode: bool = False) -> None:
        self.fast_decode = fast_decode  # the engine's own step (else transformers' forward, on the same layers, one lane)
        self.lanes: list[Lane] = []
        self.positions = torch.zeros((0,), dtype=torch.long)  # [B]; position id of the next input
        self.next_tokens = torch.zeros((0,), dtype=torch.long)  # [B]

    @property
    def size(self) -> int:
        return sum(lane.size for lane in self.lanes)

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def mask(self) -> torch.Tensor:
        """The mask [B, T] of a batch in one lane (or none)."""
        if not self.lanes:
            return torch.zeros((0, 0), dtype=torch.long)
        assert len(self.lanes) == 1, "a batch in several lanes has no single mask"
        return self.lanes[0].mask

    @property
    def cache(self) -> DynamicCache | None:
        """transformers' view of a batch in one lane (or None for none)."""
        if not self.lanes:
            return None
        assert len(self.lanes) == 1, "a batch in several lanes has no single cache"
        cache = DynamicCache()
        cache.layers = list(self.lanes[0].layers)
        return cache

    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.lanes[0].kv() if len(self.lanes) == 1 else []

    @torch.inference_mode()  # every buffer an inference tensor, as in the step (a compiled step guards on it)
    def join(
        self,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor,
        positions: torch.Tensor,
        next_tokens: torch.Tensor,
        buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> int:
        """Add freshly prefilled rows (kv: per layer [b, H, t, D], mask [b, t]); returns the batch
        row the first of them takes (the rest follow it). They go into the lane whose length is
        closest to theirs, unless they and every lane are `apart` (and lanes are left): then
        into a lane of their own, after the others, where `buffers` (whose leading rows and
        columns kv is, with room beyond) are held as they are, and nothing is copied."""
        t = mask.shape[1]

        def fresh() -> Lane:
            if buffers is not None and all(k.shape[-2] > t and k.shape[0] > mask.shape[0] for k, _ in buffers):
                return Lane([SlottedLayer.over(k, v, mask.shape[0], t) for k, v in buffers], mask)
            return Lane([SlottedLayer(k, v) for k, v in kv], mask)

        if not self.lanes:
            self.lanes, self.positions, self.next_tokens = [fresh()], positions, next_tokens
            return 0
        close = [i for i, lane in enumerate(self.lanes) if not (self.fast_decode and apart(lane.width, t))]
        if not close and len(self.lanes) < MAX_LANES:
            at = self.size
            self.lanes.append(fresh())
        else:
            i = min(close or range(len(self.lanes)), key=lambda j: abs(self.lanes[j].width - t))
            at = sum(lane.size for lane in self.lanes[: i + 1])
            self.lanes[i] = self.lanes[i].stacked(kv, mask)
        self.positions = torch.cat([self.positions[:at], positions, self.positions[at:]])
        self.next_tokens = torch.cat([self.next_tokens[:at], next_tokens, self.next_tokens[at:]])
        return at

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (ascending); a lane copies its cache only if it lost rows."""
        if not rows:
            self.__init__(self.fast_decode)  # type: ignore[misc]
            return
        lanes, start = [], 0
        for lane in self.lanes:
            own = [r - start for r in rows if start <= r < start + lane.size]
            if len(own) == lane.size:
                lanes.append(lane)
            elif own:
                lanes.append(lane.kept(own))
            start += lane.size
        self.lanes = lanes
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.positions = self.positions[idx]
        self.next_tokens = self.next_tokens[idx]

    @torch.inference_mode()
    def verify(self, model: torch.nn.Module, drafts: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """One forward pass over each row's next token followed by its drafts (fast step only).
        Writes their keys and values after the cache's last column without counting them yet
        (`accept` does). Returns the logits [sum(1 + k_r), V] of every real position, row after
        row, and where each row's start in them. One lane only (the engine speculates for a few rows)."""
        assert self.fast_decode and len(self.lanes) == 1
        lane = self.lanes[0]
        rows, width = self.size, 1 + max(len(d) for d in drafts)
        device = self.device
        firsts = self.next_tokens.tolist()
        tokens = torch.tensor([[t, *d] + [0] * (width - 1 - len(d)) for t, d in zip(firsts, drafts)], dtype=torch.long, device=device)
        positions = self.positions[:, None] + torch.arange(width, device=device)
        starts: list[int] = []
        keep: list[int] = []
        for r, d in enumerate(drafts):
            starts.append(len(keep))
            keep.extend(range(r * width, r * width + 1 + len(d)))
        layers = lane.layers
        length = layers[0].length
        for cache in layers:
            cache.reserve(width)
        keys = [cache.buffers[0] for cache in layers]
        values = [cache.buffers[1] for cache in layers]
        everything = len(keep) == rows * width
        logits = forward_block(
            model,
            tokens,
            positions,
            keys,
            values,
            length,
            block_mask(lane.mask, width),
            None if everything else torch.tensor(keep, dtype=torch.long, device=device),
        )
        return logits, starts

    @torch.inference_mode()
    def accept(self, accepted: list[int], next_tokens: list[int]) -> None:
        """After `verify`: row r keeps its next token and its first accepted[r] drafts. The cache
        grows by 1 + max(accepted); a row that accepted fewer gets mask 0 where the rest of its
        drafts (or another row's) were written."""
        (lane,) = self.lanes
        top = max(accepted)
        for cache in lane.layers:
            cache.advance(1 + top)
        device = self.device
        taken = torch.tensor(accepted, dtype=torch.long, device=device)
        cols = (torch.arange(1 + top, device=device)[None, :] <= taken[:, None]).to(lane.mask.dtype)
        lane.mask = torch.cat([lane.mask, cols], dim=1)
        self.positions = self.positions + 1 + taken
        self.next_tokens = torch.tensor(next_tokens, dtype=torch.long, device=device)

    @torch.inference_mode()
    def step(self, model: torch.nn.Module, compiled: StepFn | None = None, chunk: Chunk | None = None) -> torch.Tensor:
        """One decode step for every row; returns logits [B, V] for the new position.
        `compiled`, when given, replaces the fast step's forward where it can (the compiled
        step, see fast_decode.compile_step). `chunk` (fast step only): a piece of a prompt
        prefilled in the same pass (fast_decode.forward_runs)."""
        for lane in self.lanes:
            lane.mask = torch.cat([lane.mask, lane.mask.new_ones((lane.size, 1))], dim=1)
        if self.fast_decode and self.lanes:
            lanes = [(lane.layers, lane.mask) for lane in self.lanes]
            logits = decode_step(model, self.next_tokens, self.positions, lanes, compiled, chunk)
            self.positions = self.positions + 1
            return logits
        assert chunk is None, "a chunk runs beside the engine's own step only"
        out = model(
            input_ids=self.next_tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        return out.logits[:, -1, :]
