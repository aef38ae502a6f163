"""Train the bundled policy: a small Llama fitted to TinyGSM gold solutions (loss on the answer only)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..problems.tinygsm import LEVELS, Problem, generate_problem, load_test_set
from .common import POLICY_DIR, pad_batch, seed_everything, small_llama, train_loop, use_all_cores
from .tokenizer import STEP_TAG, build_tokenizer


@dataclass
class PolicyTrainConfig:
    seed: int = 0
    steps: int = 1400
    batch_size: int = 32
    lr: float = 3e-3
    out_dir: Path = POLICY_DIR
    quick: bool = False


def chat_example(tokenizer, problem: Problem) -> tuple[list[int], list[int]]:
    """Token ids of one chat-formatted problem and labels that train only the assistant's reply."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem.question}],
                                           tokenize=False, add_generation_prompt=True)
    reply = problem.solution + tokenizer.eos_token
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return p_ids + r_ids, [-100] * len(p_ids) + r_ids


class ProblemStream:
    """An endless seeded stream of training problems, none of which is in the held-out set."""

    def __init__(self, seed: int, levels: tuple[int, ...] = LEVELS):
        self.rng = random.Random(seed)
        self.levels = levels
        self.held_out = {p.question for p in load_test_set()}

    def next(self) -> Problem:
        while True:
            p = generate_problem(self.rng, self.rng.choice(self.levels))
            if p.question not in self.held_out:
                return p


def tokenizer_corpus(seed: int, n: int) -> list[str]:
    stream = ProblemStream(seed)
    texts = []
    for _ in range(n):
        p = stream.next()
        texts.append(p.question + "\n\n" + p.solution)
        # the PRM's input format, so its step tag and labels are single tokens
        texts.append(p.question + " " + " ки\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(p.steps))
                     + f" {STEP_TAG} + -")
    return texts


def causal_lm_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


def train_policy(cfg: PolicyTrainConfig) -> Path:
    """Build the tokenizer, train the policy and save both to ``cfg.out_dir``."""
    use_all_cores()
    seed_everything(cfg.seed)
    tokenizer = build_tokenizer(tokenizer_corpus(cfg.seed + 1, 300 if cfg.quick else 5000))
    model = small_llama(tokenizer, quick=cfg.quick)
    print(f"policy: {model.num_parameters() / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    stream = ProblemStream(cfg.seed)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        examples = [chat_example(tokenizer, stream.next()) for _ in range(cfg.batch_size)]
        return pad_batch([e[0] for e in examples], [e[1] for e in examples], tokenizer.pad_token_id)

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    losses = train_loop(model, next_batch, causal_lm_loss, cfg.steps, cfg.lr,
                        cfg.out_dir / "training_log.jsonl", desc="policy")
    print(f"policy: final loss {sum(losses[-50:]) / len(losses[-50:]):.4f} in {time.time() - start:.0f}s")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(cfg.out_dir)
    return cfg.out_dir
