"""Shared-prefix attention: rows that all continue one prompt read its keys and values once.

The plain way to decode B*K children of one prompt copies the prompt's KV cache to every row
(``batch_repeat_interleave``), and then every decode step reads every copy: for 16 children of a
240-token prompt that is about as many bytes as the model's weights. Here the prompt's keys and
values stay at batch size 1 and each row's cache holds only its own tokens. Attention scores
against both parts are softmaxed together and the two weighted sums added: exactly the same
attention (the decomposition of Hydragen, Juravsky et al. 2024, arXiv:2402.05099), so greedy
decoding gives the same tokens (``tests/test_generator.py`` checks it against ``generate``).

It is an attention implementation registered with transformers (``AttentionInterface``). Outside
``SharedPrefix.active()`` it is transformers' own SDPA attention, so the model behaves as before
for every other caller (``generate``, scorers). Only architectures whose attention is plain causal
softmax attention with no sliding window qualify (``supports_shared_prefix``).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION_NAME = "reasoning_viz_shared_prefix"
# Architectures whose attention modules are standard rotary softmax attention (checked by the tests on
# tiny random Llama and Qwen2 models); others keep the copying path.
_PLAIN_ATTENTION = {"llama", "qwen2", "qwen3"}
_active: ContextVar["SharedPrefix | None"] = ContextVar("reasoning_viz_shared_prefix", default=None)


class SharedPrefix:
    """The prompt's keys and values for every layer, at batch size 1, shared by all rows in a forward."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.layers = layers
        self.length = layers[0][0].shape[-2] if layers else 0

    @contextmanager
    def active(self) -> Iterator[None]:
        """Forwards inside this block attend to the prefix before their own cache."""
        token = _active.set(self)
        try:
            yield
        finally:
            _active.reset(token)


def supports_shared_prefix(model: PreTrainedModel) -> bool:
    """Whether ``enable_shared_prefix`` may switch this model's attention (it must be SDPA, full attention)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in _PLAIN_ATTENTION:
        return False
    if cfg._attn_implementation not in ("sdpa", ATTENTION_NAME):
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    return all(kind == "full_attention" for kind in (getattr(cfg, "layer_types", None) or ["full_attention"]))


def enable_shared_prefix(model: PreTrainedModel) -> bool:
    """Switch a supported model to shared-prefix attention (SDPA whenever no prefix is active)."""
    if not supports_shared_prefix(model):
        return False
    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)  # the same masks as SDPA
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
    return True


def _per_kv_head(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(batch, heads, q, d) -> (batch, kv_heads, group * q, d): the query heads that share one KV head together."""
    b, h, q, d = x.shape
    return x.reshape(b, kv_heads, (h // kv_heads) * q, d)


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """Attention over [shared prefix | this row's cache]; plain SDPA when no prefix is active."""
    prefix = _active.get()
    if prefix is None or module.training or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    prefix_key, prefix_value = prefix.layers[module.layer_idx]
    batch, heads, q_len, dim = query.shape
    kv_heads, own_len = key.shape[1], key.shape[-2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = _per_kv_head(query, kv_heads)  # (batch, kv_heads, group*q_len, dim)
    # Prefix scores: every row and head group against the one copy of the prompt (a batched matmul per KV head).
    q_all = q.transpose(0, 1).reshape(kv_heads, batch * group * q_len, dim)
    prefix_scores = (q_all @ prefix_key[0].transpose(-1, -2)).reshape(kv_heads, batch, group * q_len, -1)
    prefix_scores = prefix_scores.transpose(0, 1)
    own_scores = q @ key.transpose(-1, -2)  # (batch, kv_heads, group*q_len, own_len)
    if attention_mask is None and q_len > 1:  # SDPA would have used is_causal: build that mask
        attention_mask = (torch.arange(q_len, device=query.device)[:, None] + (own_len - q_len)
                          >= torch.arange(own_len, device=query.device)[None, :])[None, None]
    scores = torch.cat([prefix_scores, own_scores], -1).float() * scale
    if attention_mask is not None:  # (batch or 1, 1, q_len, own_len): bool = may attend, float = additive
        mask = attention_mask[..., -own_len:].unsqueeze(2).expand(-1, -1, group, -1, -1)
        mask = mask.reshape(mask.shape[0], 1, group * q_len, own_len)
        own = scores[..., prefix.length:]
        scores[..., prefix.length:] = own.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else own + mask.float()
    weights = torch.softmax(scores, -1).to(value.dtype)
    prefix_weights = weights[..., :prefix.length].transpose(0, 1).reshape(kv_heads, batch * group * q_len, -1)
    out = (prefix_weights @ prefix_value[0]).reshape(kv_heads, batch, group * q_len, -1).transpose(0, 1)
    out = out + weights[..., prefix.length:] @ value
    out = out.reshape(batch, heads, q_len, -1).transpose(1, 2).contiguous()  # (batch, q_len, heads, dim) as SDPA
    return out, None
