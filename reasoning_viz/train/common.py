"""What the recipes share: the model shapes, seeding, the optimiser loop and its log."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_all_cores() -> None:
    """Every core, unless ``OMP_NUM_THREADS`` says how many (to run two recipes side by side)."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)))


@dataclass(frozen=True)
class LlamaSize:
    """A small Llama's shape: width, depth, attention heads (a quarter as many key/value heads), MLP width."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


LARGE_SIZE = LlamaSize(256, 4, 8, 704)  # ~3M parameters; the PRM is built on these layers
STUDENT_SIZE = LlamaSize(192, 2, 4, 512)  # ~0.9M: under a third of the larger model's parameters
TOY_SIZE = LlamaSize(32, 1, 2, 64)  # ``--quick`` runs in the tests


def small_llama(tokenizer: PreTrainedTokenizerBase, size: LlamaSize) -> LlamaForCausalLM:
    """A fresh Llama of the given ``size`` with grouped-query attention and tied embeddings."""
    hidden, layers, heads, inter = size.hidden, size.layers, size.heads, size.intermediate
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def pad_batch(sequences: list[list[int]], labels: list[list[float]], pad_id: int,
              label_dtype: torch.dtype = torch.long) -> dict[str, torch.Tensor]:
    """Right-pad a training batch; padded label positions are ignored by the loss (-100)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    lab = torch.full((len(sequences), width), -100, dtype=label_dtype)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (s, l) in enumerate(zip(sequences, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l, dtype=label_dtype)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "labels": lab, "attention_mask": mask}


def train_loop(model: torch.nn.Module, next_batch: Callable[[int], dict[str, torch.Tensor]],
               loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
               steps: int, lr: float, log_path: Path | None, desc: str, warmup: int = 50) -> list[float]:
    """AdamW with linear warm-up and cosine decay; a progress bar and a JSON-lines loss log."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(warmup, max(1, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) + lr * 0.02

    losses: list[float] = []
    log = open(log_path, "w", encoding="utf-8") if log_path else None
    start = time.time()
    model.train()
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_fn(model, next_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        recent = sum(losses[-20:]) / len(losses[-20:])
        bar.set_postfix(loss=f"{recent:.4f}")
        if log:
            log.write(json.dumps({"step": step, "loss": round(losses[-1], 5), "lr": lr_at(step),
                                  "seconds": round(time.time() - start, 1)}) + "\n")
    if log:
        log.close()
    model.eval()
    return losses
