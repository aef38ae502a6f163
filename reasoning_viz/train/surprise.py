"""The PRM's verifier layers: on the frozen larger model, two layers that put, at every token the student
wrote, the larger model's own log-odds of that token into the PRM's ``+``/``-`` logits — its surprise.

Why fitted by regression and not trained through the step labels: whether a digit agrees with the one
the model predicted one position back is an XOR of two features, which gradient descent on the tag loss
is slow to find (the first recipe's plain fine-tune ranked a right result above a wrong one 53% of the
time; the PRM card has the figures). So the check is built part by part, each part fitted to a target
of its own: a code of the prediction (``add_code_layer``), its comparison with the next token
(``add_comparison_layer``), and a tag layer that starts as a minimum over the path (``init_min_pool``).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ..models.scorers import MathShepherdPRM
from .common import pad_batch


def add_top_layers(model: PreTrainedModel, n: int) -> None:
    """Stack ``n`` new Llama decoder layers on top whose output projections start at zero, so the
    model computes exactly what it did until they are trained. It still loads with ``from_pretrained``."""
    for _ in range(n):
        layer = LlamaDecoderLayer(model.config, layer_idx=len(model.model.layers))
        for name, param in layer.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                torch.nn.init.zeros_(param)
            elif param.dim() == 2:
                torch.nn.init.normal_(param, std=model.config.initializer_range)
        model.model.layers.append(layer)
    model.config.num_hidden_layers = len(model.model.layers)


def train_only_top(model: PreTrainedModel, n_base: int) -> None:
    """Freeze the embeddings, the first ``n_base`` layers and the final norm: the base keeps predicting
    tokens exactly as before, which is what the surprise target reads."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("model.layers.") and int(name.split(".")[2]) >= n_base


def surprise_mask(prm: MathShepherdPRM, question: str, ids: list[int]) -> list[int]:
    """1 at every solution token the policy wrote (not the question, a tag, or the line after a tag)."""
    start = len(prm.tokenizer.encode(prm.format(question, [])))
    tag = prm.step_tag_id
    return [int(i >= start and ids[i] != tag and ids[i - 1] != tag) for i in range(len(ids))]


def base_token_probs(model: PreTrainedModel, base_hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """P(token | the tokens before it) under the frozen base, read through the model's own final norm
    and LM head from the base's last hidden state; 0 at the first position. ``ids``: (batch, length)."""
    probs = model.lm_head(model.model.norm(base_hidden)).softmax(-1)
    p_token = torch.zeros(ids.shape, dtype=probs.dtype)
    p_token[:, 1:] = probs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return p_token


@dataclass
class ProbabilityCode:
    """A rank-r linear code of the base's next-token distributions (PCA): ``of(model, normed)`` is the
    unit-scaled code of the distributions the model's head gives the final-normed states ``normed``."""
    mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor

    @torch.no_grad()
    def of(self, model: PreTrainedModel, normed: torch.Tensor) -> torch.Tensor:
        return torch.cat([(((chunk @ model.lm_head.weight.T).softmax(-1) - self.mean) @ self.basis) / self.scale
                          for chunk in normed.split(20_000)])


@torch.no_grad()
def probability_code(model: PreTrainedModel, normed: torch.Tensor, rank: int) -> ProbabilityCode:
    """The best rank-``rank`` linear code of the base's next-token distributions (PCA, in float64).
    ``normed``: final-normed base states, one row per position. 64 numbers kept nearly all of the
    surprise, measured on the first bundled PRM's samples (the PRM card)."""
    probs = (normed @ model.lm_head.weight.T).softmax(-1).double()
    mean = probs.mean(0)
    _, vectors = torch.linalg.eigh((probs - mean).T @ (probs - mean))
    basis = vectors[:, -rank:].float()
    scale = ((probs - mean).float() @ basis).std(0) + 1e-8
    return ProbabilityCode(mean.float(), basis, scale)


def add_code_layer(model: PreTrainedModel, hidden: torch.Tensor, rank: int, steps: int, lr: float,
                   seed: int) -> tuple[float, ProbabilityCode]:
    """Append a layer whose MLP writes, at every position, a ``rank``-number code of the base's
    next-token distribution there; its attention writes nothing. The MLP is fitted by plain
    regression on the base's last hidden states (``hidden``, one row per position), then installed. Returns
    the held-out error (mean squared, code unit-scaled) and the code it writes.

    Why by regression, outside the model: trained in place through a loss at every token, this code is
    what gradient descent finds slowest (the next layer then only has to move it one position on,
    which it learns at once, and compare it with the token there)."""
    if not 0 < rank <= model.config.vocab_size:
        raise ValueError(f"the code's rank must be between 1 and the vocabulary size, got {rank}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        size = hidden.pow(2).mean(-1).sqrt().mean()  # the residual's typical size
        normed = model.model.norm(hidden[torch.randperm(len(hidden), generator=generator)])
    code = probability_code(model, normed[:40_000], rank)
    target = code.of(model, normed)
    n_test = max(1, len(normed) // 20)
    add_top_layers(model, 1)
    layer = model.model.layers[-1]
    mlp = layer.mlp
    readout = torch.nn.Parameter(torch.randn(rank, mlp.down_proj.in_features, generator=generator) * 0.02)
    fit_params = [mlp.gate_proj.weight, mlp.up_proj.weight, readout]

    def code_of(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), readout)

    opt = torch.optim.AdamW(fit_params, lr=lr, weight_decay=0.0)
    train_x, train_y = normed[n_test:], target[n_test:]
    for _ in tqdm(range(steps), desc="prm code fit", dynamic_ncols=True):
        rows = torch.randint(0, len(train_x), (2048,), generator=generator)
        loss = (code_of(train_x[rows]) - train_y[rows]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        held_out = (code_of(normed[:n_test]) - target[:n_test]).pow(2).mean().item()
        # Written into the residual through a fixed random map at the residual's own size, so the
        # next layers see it beside the base state, not drowned by it.
        spread = torch.randn(rank, model.config.hidden_size, generator=generator) / rank ** 0.5
        mlp.down_proj.weight.copy_(size * spread.T @ readout)
        layer.post_attention_layernorm.weight.copy_(model.model.norm.weight)  # the MLP reads normed states
    return held_out, code


def previous_token_loss(attentions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross entropy of every head's attention against "the position just before", at the
    positions in ``mask``: the layer after the code layer learns at once to move the code one
    position on. ``attentions``: (batch, heads, length, length); ``mask``: (batch, length), bool."""
    previous = torch.diagonal(attentions, offset=-1, dim1=-2, dim2=-1)  # weight on t-1 at query t
    at = mask[:, None, 1:].expand_as(previous)
    return -previous[at].clamp(min=1e-6).log().mean()


# The comparison layer's target, log-odds of the base's probability of a token, is clipped: below -6
# (P < 0.25%) a slip is a slip, above 5 (P > 99.3%) a token is fine; off the solution it is the top.
LOG_ODDS_RANGE = (-6.0, 5.0)
PREVIOUS_TOKEN_STEPS = 200  # previous-token loss 4.7 -> 0.014 nats in 200 steps of 16 paths (measured)


def add_comparison_layer(model: PreTrainedModel, residuals: list[torch.Tensor], p_token: list[torch.Tensor],
                         masks: list[list[int]], codes: torch.Tensor, candidates: list[int], steps: int, lr: float,
                         seed: int, log_path: Path | None = None) -> tuple[float, list[torch.Tensor]]:
    """Append a layer, above a code layer (``add_code_layer``), that puts at every token the policy wrote
    the base's own log-odds of that token into the ``+``/``-`` logits: the PRM's reading there is the
    base's surprise. Built in two stages, neither through a loss at the tags:

    1. attention: the queries and keys learn to look one position back (``previous_token_loss`` alone);
       the values are a least-squares decode of the code of the prediction made there (``codes``: its
       target, one row per position of ``residuals`` in order), written on through a fixed random map;
    2. MLP: plain regression, so that the final norm and head read at each token the clipped
       log-odds of ``p_token`` (``LOG_ODDS_RANGE``; the top of it off the solution, ``masks`` = 0).

    ``residuals``: per sequence, the residual entering the new layer (``frozen_part``). Returns the
    MLP's held-out error (mean squared, in log-odds) and per sequence the residual leaving the layer.

    Why fitted: this layer compares the prediction one position back with the token here, which the
    a loss at every token teaches slowly (3,000 steps of 16 paths, 22 minutes, left it 12 points of
    best-of-16 short of its target); regression on big batches of cached positions gets further in
    about a quarter of the time (the PRM's card has the figures)."""
    config = model.config
    head_dim, n_kv, n_heads = config.head_dim, config.num_key_value_heads, config.num_attention_heads
    rank = codes.shape[1]
    if rank > n_kv * head_dim:
        raise ValueError(f"the attention carries {n_kv * head_dim} numbers a position, the code has {rank}")
    generator = torch.Generator().manual_seed(seed)
    add_top_layers(model, 1)
    index = len(model.model.layers) - 1
    layer = model.model.layers[index]
    attention, mlp = layer.self_attn, layer.mlp
    for param in model.parameters():
        param.requires_grad = False
    implementation = config._attn_implementation
    model.set_attn_implementation("eager")  # the previous-token loss reads attention weights
    lengths = [len(r) for r in residuals]

    def batch_of(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(lengths[i] for i in rows)
        states = torch.zeros(len(rows), width, config.hidden_size)
        attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for row, i in enumerate(rows):
            states[row, :lengths[i]], attention_mask[row, :lengths[i]] = residuals[i], 1
            mask[row, :lengths[i]] = torch.tensor(masks[i], dtype=torch.bool)
        return states, attention_mask, mask

    # 1. Look one position back.
    looking = [attention.q_proj.weight, attention.k_proj.weight]
    for param in looking:
        param.requires_grad = True
    opt = torch.optim.AdamW(looking, lr=3e-3, weight_decay=0.0)
    for _ in tqdm(range(PREVIOUS_TOKEN_STEPS), desc="prm previous-token heads", dynamic_ncols=True):
        rows = torch.randint(0, len(residuals), (16,), generator=generator).tolist()
        states, attention_mask, mask = batch_of(rows)
        with only_layers(model, index):
            out = model(inputs_embeds=states, attention_mask=attention_mask, output_attentions=True)
        loss = previous_token_loss(out.attentions[0], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for param in looking:
        param.requires_grad = False
    model.set_attn_implementation(implementation)
    flat = torch.cat(residuals)
    with torch.no_grad():  # ... and carry the code of the prediction made there.
        sample = torch.randperm(len(flat), generator=generator)[:100_000]
        decode = torch.linalg.lstsq(layer.input_layernorm(flat[sample]), codes[sample]).solution  # (hidden, rank)
        attention.v_proj.weight.zero_()
        attention.v_proj.weight[:rank] = decode.T
        size = flat[sample].pow(2).mean(-1).sqrt().mean()
        spread = torch.randn(rank, config.hidden_size, generator=generator) / rank ** 0.5
        group = n_heads // n_kv  # query heads per key/value head; the first of each group writes
        for kv in range(n_kv):
            part = spread[kv * head_dim:(kv + 1) * head_dim]
            attention.o_proj.weight[:, kv * group * head_dim:kv * group * head_dim + len(part)] = size * part.T
        after_attention = []
        captured: list[torch.Tensor] = []
        hook = layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            for start in range(0, len(residuals), 32):
                rows = list(range(start, min(start + 32, len(residuals))))
                states, attention_mask, _ = batch_of(rows)
                with only_layers(model, index):
                    model(inputs_embeds=states, attention_mask=attention_mask)
                block = captured.pop()
                after_attention.extend(block[row, :lengths[i]] for row, i in enumerate(rows))
        finally:
            hook.remove()
    # 2. The MLP, by regression on every position.
    inputs = torch.cat(after_attention)
    low, high = LOG_ODDS_RANGE
    target = torch.cat([torch.where(torch.tensor(m, dtype=torch.bool), torch.logit(p.clamp(1e-6, 1 - 1e-6)),
                                    torch.tensor(high)) for p, m in zip(p_token, masks)]).clamp(low, high)
    logit_direction = model.lm_head.weight[candidates[0]] - model.lm_head.weight[candidates[1]]

    def read(rows: torch.Tensor) -> torch.Tensor:  # the +/- logit difference the final norm and head read
        x = inputs[rows]
        return model.model.norm(x + mlp(layer.post_attention_layernorm(x))) @ logit_direction

    order = torch.randperm(len(inputs), generator=generator)
    held_out_rows, train_rows = order[: max(1, len(order) // 20)], order[max(1, len(order) // 20):]
    fitted = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    with torch.no_grad():
        torch.nn.init.normal_(mlp.down_proj.weight, std=0.1 * config.initializer_range)  # zero would stall
    for param in fitted:
        param.requires_grad = True
    opt = torch.optim.AdamW(fitted, lr=lr, weight_decay=0.0)
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    started = time.time()
    bar = tqdm(range(steps), desc="prm comparison fit", dynamic_ncols=True)
    for step in bar:
        for param_group in opt.param_groups:  # warm-up, then cosine decay
            param_group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = train_rows[torch.randint(0, len(train_rows), (4096,), generator=generator)]
        loss = (read(rows) - target[rows]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if log:
            log.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                                  "seconds": round(time.time() - started, 1)}) + "\n")
    if log:
        log.close()
    for param in fitted:
        param.requires_grad = False
    with torch.no_grad():
        held_out = (read(held_out_rows) - target[held_out_rows]).pow(2).mean().item()
        leaving = inputs + torch.cat([mlp(layer.post_attention_layernorm(chunk)) for chunk in inputs.split(50_000)])
    return held_out, list(leaving.split(lengths))


@torch.no_grad()
def init_min_pool(model: PreTrainedModel, layer_index: int, candidates: list[int], at_tags: torch.Tensor,
                  sharpness: float = 2.0) -> None:
    """Set the first attention head of layer ``layer_index`` (a new, zero-initialised one) so that at a
    tag it adds to P(+)'s logit the *lowest* such logit over the positions up to it: a path is as good
    as its weakest token, and the layers below score every token. Fine-tuning on the step labels then
    starts from that, instead of from an attention that averages.

    ``at_tags``: that layer's input (the residual) at tag positions, for the query's direction.
    ``sharpness``: attention score per unit of logit (high: a hard minimum)."""
    layer = model.model.layers[layer_index]
    attention = layer.self_attn
    head_dim = model.config.head_dim
    plus, minus = model.lm_head.weight[candidates[0]], model.lm_head.weight[candidates[1]]
    norm_weight = model.model.norm.weight
    layer.input_layernorm.weight.copy_(norm_weight)  # so a position's logit is (plus - minus) . input
    logit_direction = plus - minus
    normed = layer.input_layernorm(at_tags)
    query_direction = normed.mean(0) / normed.mean(0).norm()
    along = normed @ query_direction
    if along.min() <= 0:  # a tag whose query pointed the other way would pool the maximum instead
        raise ValueError("the residual at the tags has no direction they all share to build the pool's query on")
    typical = along.mean()
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
        proj.weight.zero_()
    # The slowest rotary pair (the head's last dimension) barely turns over a few hundred tokens, so
    # the score is the content term alone: sharpness x (minus the position's logit).
    attention.q_proj.weight[head_dim - 1] = query_direction * sharpness * head_dim ** 0.5 / typical
    attention.k_proj.weight[head_dim - 1] = -logit_direction
    attention.v_proj.weight[0] = logit_direction
    write = norm_weight * logit_direction  # the direction the final norm and head read as the logit
    size = at_tags.pow(2).mean(-1).sqrt().mean()
    attention.o_proj.weight[:, 0] = write * size / (write @ write)


@torch.no_grad()
def layer_inputs(model: PreTrainedModel, layers: list[int], sequences: list[list[int]],
                 pad_id: int) -> list[list[torch.Tensor]]:
    """The residual entering each of ``layers`` (the number of layers: the final norm), for every one of
    ``sequences``: ``out[j][i]`` is layer ``layers[j]``'s input for sequence i, one row per token."""
    blocks = model.model.layers
    captured: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [(blocks[index] if index < len(blocks) else model.model.norm).register_forward_pre_hook(
        lambda _module, args, store=store: store.append(args[0])) for index, store in zip(layers, captured)]
    out: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for start in range(0, len(sequences), 32):
            chunk = sequences[start:start + 32]
            batch = pad_batch(chunk, [[] for _ in chunk], pad_id)
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for store, per_sequence in zip(captured, out):
                states = store.pop()
                per_sequence.extend(states[row, :len(seq)].clone() for row, seq in enumerate(chunk))
    finally:
        for hook in hooks:
            hook.remove()
    return out


def residual_at(model: PreTrainedModel, layer: int, sequences: list[list[int]],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual entering layer ``layer`` (the number of layers: the final norm) at every real
    position of ``sequences``, one row each, and the token ids there (to pick rows, e.g. the tags)."""
    (states,) = layer_inputs(model, [layer], sequences, pad_id)
    return torch.cat(states), torch.tensor([t for seq in sequences for t in seq])


@torch.no_grad()
def frozen_part(model: PreTrainedModel, n_base: int, n_frozen: int, sequences: list[list[int]],
                pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence, what the frozen layers give the trained ones, computed once for the whole stage:
    the residual entering layer ``n_frozen`` (the first trained layer) and the frozen base's probability
    of every token (the surprise target, read at layer ``n_base``). The frozen layers were half of every
    training step's time when they ran on each batch."""
    with only_layers(model, 0, n_frozen):  # the layers above would run for nothing; the norm's input is then
        base, top = layer_inputs(model, [n_base, n_frozen], sequences, pad_id)  # layer n_frozen's
    return [(residual, base_token_probs(model, base_state[None], torch.tensor([seq]))[0])
            for residual, base_state, seq in zip(top, base, sequences)]


@contextmanager
def only_layers(model: PreTrainedModel, start: int, stop: int | None = None) -> Iterator[None]:
    """Within the block the model runs layers ``start`` to ``stop`` alone (from ``start`` > 0: feed it
    their input as ``inputs_embeds``); embeddings, final norm and head are unchanged."""
    every = model.model.layers
    model.model.layers = every[start:stop]
    try:
        yield
    finally:
        model.model.layers = every
