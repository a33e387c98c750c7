"""KV cache allocated once per run, and the attention masks it implies.

Keys are stored after rotary, as in the reference. Columns (time steps shared by the whole batch) are written to
slot `column % capacity`; with a sliding window of W the capacity is W, so memory is bounded by the window however
long the run. Each slot remembers which column it holds and, per row, whether that column was padding; the mask
is computed from that bookkeeping, so the window is enforced in prefill and in decode alike (spec §1.4: a query at
column i sees keys j with i - W < j <= i).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import Starcoder2Config


# Returned instead of a mask when plain causal attention over exactly the new keys is exact (the fast kernel path).
CAUSAL = "causal"


def attention_mask(
    query_columns: Tensor, key_columns: Tensor, key_valid: Tensor | None, window: int | None, dtype: torch.dtype
) -> Tensor:
    """Additive mask (B or 1, 1, Q, K): 0 where allowed, the dtype's minimum where not (as the reference's eager).

    `key_columns` holds -1 for empty slots; `key_valid` (B, K) is False for padding.
    """
    q = query_columns[:, None]
    k = key_columns[None, :]
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= k > q - window
    allowed = allowed[None, None]
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


class KVCache:
    """Per-layer key/value ring buffers of shape (layers, B, kv_heads, capacity, head_dim)."""

    def __init__(
        self,
        config: Starcoder2Config,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        reserve: int = 0,
    ) -> None:
        window = config.sliding_window
        self.window = window
        # `reserve` slots beyond the window keep columns a later prompt may give up (see `keep`).
        self.capacity = min(max_length, window + reserve) if window is not None else max_length
        # Whether the slots in use hold exactly the columns a new query may see: then masks can be skipped.
        self.ring_is_window = window is None or self.capacity <= window
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, self.capacity, config.head_size)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_columns = torch.full((self.capacity,), -1, dtype=torch.long, device=device)
        self.slot_valid = torch.ones((batch_size, self.capacity), dtype=torch.bool, device=device)
        self.max_length = max_length
        self.seen = 0  # columns written so far (host-side, so no device sync is needed to read it)
        self.padded = False  # whether any column was ever written as padding (then masks are always needed)
        self._step: _Step | None = None
        self._pending: list[tuple[Tensor, Tensor]] = []  # a tentative step's new keys and values, per layer
        # Set by a static decode step (see decode.py): the column being written, as a device tensor.
        self.static_column: Tensor | None = None
        self._static_slot: Tensor | None = None

    @property
    def open_step(self) -> bool:
        """Whether a step was begun and not ended (a forward pass broken off)."""
        return self._step is not None

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def begin(self, num_new: int, valid: Tensor | None, dtype: torch.dtype, tentative: bool = False,
              ) -> Tensor | str | None:
        """Prepare to append `num_new` columns (validity `valid` (B, num_new) or None) and return their mask:
        a tensor, `CAUSAL`, or None when every key the queries will see is allowed (decode without padding).

        `tentative`: the new columns are attended to but not stored; `commit(n)` later keeps the first n of them
        (checking a draft of several tokens, of which only a prefix may be accepted)."""
        if self.static_column is not None:
            return self._begin_static(num_new, dtype)  # (its runner checks the length: no host value here)
        if self.seen + num_new > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {self.seen + num_new} requested")
        device = self.keys.device
        start = self.seen
        new_columns = torch.arange(start, start + num_new, device=device)
        new_valid = valid.bool() if valid is not None else torch.ones(
            (self.batch_size, num_new), dtype=torch.bool, device=device
        )
        slots = new_columns % self.capacity
        # Writing first is safe when nothing a query needs gets overwritten: a single new column (it replaces
        # the one just outside the window) or no wrap-around at all.
        write_first = not tentative and (num_new == 1 or start + num_new <= self.capacity)
        # The ring slots the queries attend over besides the new columns: those in use, the whole ring once it
        # has wrapped. (Only those: the same keys in the same order whatever the ring's size, so a slot kept for
        # prompt reuse computes what a one-shot cache does.)
        held = start if start + num_new <= self.capacity else self.capacity
        if write_first:
            self.slot_columns[slots] = new_columns
            self.slot_valid[:, slots] = new_valid
            used = min(start + num_new, self.capacity)
            key_columns, key_valid = self.slot_columns[:used], self.slot_valid[:, :used]
        else:
            # A tentative step, or a chunk that wraps: attend over the ring plus the new columns (a wrapping chunk
            # then keeps the last `capacity`).
            key_columns = torch.cat([self.slot_columns[:held], new_columns])
            key_valid = torch.cat([self.slot_valid[:, :held], new_valid], dim=1)
        self._step = _Step(start, num_new, slots, new_columns, new_valid, write_first, tentative, held)
        if valid is not None and not self.padded:
            self.padded = not bool(new_valid.all())
        # Every slot in use holds a real column inside the window of every query: the ring keeps exactly the window,
        # or no column has left the window yet.
        inside = self.ring_is_window or start + num_new <= self.window
        if write_first and not self.padded and inside:
            if num_new == 1:
                return None
            if start == 0 and (self.window is None or num_new <= self.window):
                return CAUSAL
        return attention_mask(new_columns, key_columns, key_valid, self.window, dtype)

    def _begin_static(self, num_new: int, dtype: torch.dtype) -> Tensor:
        """One decoded column whose index lives on the device: every shape and address is the same at every
        step and nothing reads a host value, so the step can be captured as a CUDA graph (or compiled). The
        queries attend over the whole ring; the mask, computed on the device, hides empty slots, padding and
        columns outside the window."""
        if num_new != 1:
            raise ValueError("a static decode step appends exactly one column")
        column = self.static_column
        slot = torch.remainder(column, self.capacity)
        self.slot_columns.index_copy_(0, slot, column)
        self.slot_valid.index_fill_(1, slot, True)
        allowed = (self.slot_columns >= 0) & (self.slot_columns <= column)
        if self.window is not None:
            allowed &= self.slot_columns > column - self.window
        allowed = allowed[None, :] & self.slot_valid  # (B, capacity)
        self._static_slot = slot
        self._step = None
        mask = torch.zeros((self.batch_size, 1, 1, self.capacity), dtype=dtype, device=self.keys.device)
        return mask.masked_fill_(~allowed[:, None, None, :], torch.finfo(dtype).min)

    def update(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Store this layer's new keys/values (B, kv_heads, num_new, D); return what the queries attend over."""
        if self.static_column is not None:
            self.keys[layer].index_copy_(2, self._static_slot, key)
            self.values[layer].index_copy_(2, self._static_slot, value)
            return self.keys[layer], self.values[layer]
        step = self._step
        k_cache, v_cache = self.keys[layer], self.values[layer]
        if step.write_first:
            if step.num_new == 1 or step.start + step.num_new <= self.capacity:
                lo = step.start % self.capacity
                k_cache[:, :, lo:lo + step.num_new] = key
                v_cache[:, :, lo:lo + step.num_new] = value
            used = min(step.start + step.num_new, self.capacity)
            return k_cache[:, :, :used], v_cache[:, :, :used]
        keys = torch.cat([k_cache[:, :, :step.held], key], dim=2)
        values = torch.cat([v_cache[:, :, :step.held], value], dim=2)
        if step.tentative:
            self._pending.append((key, value))
            return keys, values
        keep = slice(step.num_new - self.capacity, None) if step.num_new > self.capacity else slice(None)
        k_cache[:, :, step.slots[keep]] = key[:, :, keep]
        v_cache[:, :, step.slots[keep]] = value[:, :, keep]
        return keys, values

    def end(self) -> None:
        """Finish the step begun by `begin` (after every layer has called `update`)."""
        if self.static_column is not None:
            return  # the host-side count is advanced by the static step's runner, once per replay
        step = self._step
        if step.tentative:
            return  # the step stays open until commit()
        if not step.write_first:
            keep = slice(step.num_new - self.capacity, None) if step.num_new > self.capacity else slice(None)
            self.slot_columns[step.slots[keep]] = step.columns[keep]
            self.slot_valid[:, step.slots[keep]] = step.valid[:, keep]
        self.seen += step.num_new
        self._step = None

    def commit(self, count: int) -> None:
        """Keep the first `count` columns of the tentative step and forget the rest."""
        step = self._step
        if step is None or not step.tentative or not 0 <= count <= step.num_new:
            raise ValueError("commit() needs an open tentative step and 0 <= count <= its columns")
        first = max(0, count - self.capacity)  # of more than `capacity` new columns only the last ones stay
        slots = step.slots[first:count]
        for layer, (key, value) in enumerate(self._pending):
            self.keys[layer][:, :, slots] = key[:, :, first:count]
            self.values[layer][:, :, slots] = value[:, :, first:count]
        self.slot_columns[slots] = step.columns[first:count]
        self.slot_valid[:, slots] = step.valid[:, first:count]
        self.seen += count
        self._pending = []
        self._step = None

    def keep(self, columns: int) -> bool:
        """Forget every column from `columns` on, so that the next ones continue from there (a new prompt that
        shares its first `columns` tokens with what the cache holds). False, and nothing changed, when a column a
        new query would attend to was already overwritten: the ring keeps the window plus `reserve` columns, so
        at most `reserve` columns past `columns` may have been written."""
        if not 0 < columns <= self.seen or self._step is not None:
            return False
        needed_from = 0 if self.window is None else max(0, columns - self.window + 1)
        held = self.slot_columns[torch.arange(needed_from, columns, device=self.slot_columns.device) % self.capacity]
        if not bool((held == torch.arange(needed_from, columns, device=held.device)).all()):
            return False
        # (The emptied slots are refilled before any query could see past them where masks are skipped: without a
        # window slot i holds column i, and a ring of exactly the window can only give up its newest column.)
        self.slot_columns.masked_fill_(self.slot_columns >= columns, -1)
        self.seen = columns
        return True

    def reset(self) -> None:
        """Empty, for a run from the first column."""
        self.slot_columns.fill_(-1)
        self.slot_valid.fill_(True)
        self.seen, self.padded = 0, False
        self.ring_is_window = self.window is None or self.capacity <= self.window

    def positions_held(self) -> int:
        return int((self.slot_columns >= 0).sum())

    def repeat_rows(self, n: int) -> "KVCache":
        """A cache whose rows are each row of this one repeated n times (n samples share one prefill)."""
        clone = object.__new__(KVCache)
        clone.__dict__.update(self.__dict__)
        clone.keys = self.keys.repeat_interleave(n, dim=1)
        clone.values = self.values.repeat_interleave(n, dim=1)
        clone.slot_columns = self.slot_columns.clone()
        clone.slot_valid = self.slot_valid.repeat_interleave(n, dim=0)
        return clone


class _Step:
    __slots__ = ("start", "num_new", "slots", "columns", "valid", "write_first", "tentative", "held")

    def __init__(self, start, num_new, slots, columns, valid, write_first, tentative=False, held=0):
        self.start, self.num_new, self.slots, self.held = start, num_new, slots, held
        self.columns, self.valid, self.write_first, self.tentative = columns, valid, write_first, tentative
