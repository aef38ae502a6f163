"""A KV cache that appends decoded tokens in place instead of re-concatenating itself every step.

transformers' ``DynamicLayer`` grows by ``torch.cat([keys, new], -2)``, which copies the whole
cache — for B*K children that all repeat a long shared prompt, tens of megabytes — once per layer
per decoded token. ``AppendLayer`` keeps the same interface (``update``, ``batch_repeat_interleave``,
``batch_select_indices``, ``crop``) but holds its keys and values in buffers with spare room along
the sequence axis, so a decode step writes one slot and returns views. The views have the layout
``DynamicLayer`` would give (batch, heads, length, head_dim), so attention kernels need no change.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer


class AppendLayer(DynamicLayer):
    """One layer's keys and values, stored with ``reserve`` free slots for the tokens still to come."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve = reserve
        self._key_buf: torch.Tensor | None = None
        self._value_buf: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self._length + new
        if self._key_buf is None or end > self._key_buf.shape[-2]:
            self._grow(key_states, value_states, end + self.reserve)
        self._key_buf[:, :, self._length:end] = key_states
        self._value_buf[:, :, self._length:end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def load(self, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> None:
        """Take over buffers whose first ``length`` positions are already filled (the rest is free room)."""
        if not self.is_initialized:
            self.lazy_initialization(key_buffer, value_buffer)
        self._key_buf, self._value_buf = key_buffer, value_buffer
        self._set_length(length)

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        batch, heads, _, key_dim = key_states.shape
        keys = key_states.new_empty(batch, heads, capacity, key_dim)
        values = value_states.new_empty(batch, heads, capacity, value_states.shape[-1])
        if self._length:
            keys[:, :, :self._length] = self.keys
            values[:, :, :self._length] = self.values
        self._key_buf, self._value_buf = keys, values

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._key_buf[:, :, :length]
        self.values = self._value_buf[:, :, :length]

    def _select_rows(self, rows: torch.Tensor) -> None:
        if self._length:
            rows = rows.to(self._key_buf.device)
            self._key_buf, self._value_buf = self._key_buf[rows], self._value_buf[rows]
            self._set_length(self._length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._length:
            self._select_rows(torch.arange(self._key_buf.shape[0]).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_rows(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_rows(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:  # same contract as DynamicLayer.crop
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove and self._length:
            self._set_length(max(0, self._length + tokens_to_remove))

    def reset(self) -> None:
        super().reset()
        self._key_buf = self._value_buf = None
        self._length = 0


def append_cache(config: PretrainedConfig, reserve: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers append in place.

    ``reserve`` is how many tokens each layer makes room for beyond what it holds (the step's token
    cap, so a whole step decodes without reallocating). Layers of other kinds (sliding windows,
    linear attention) keep transformers' own implementation.
    """
    cache = DynamicCache(config=config)
    cache.layers = [AppendLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` since transformers 5.24 (which deprecates
    ``past_key_values`` and drops it in 5.40), ``past_key_values`` in the 5.x releases before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
