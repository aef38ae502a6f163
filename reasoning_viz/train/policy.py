"""Train a bundled policy: a small Llama fitted to TinyGSM gold solutions (loss on the answer only).

One recipe, two shipped models that differ only in size and training length (``STUDENT``, ``LARGE``):

- the **student** (``python -m reasoning_viz.train student``), the app's default policy: small and
  briefly trained, so its arithmetic is only approximately right and it errs more the longer the chain
  and the larger the numbers — the way a small real model errs;
- the **larger model** (``... train large``): three times the parameters, trained as long; near-exact.
  The PRM is built on its layers (``prm.py``), and the app offers it greedy, to set against the
  student's search.

The larger model's recipe builds the tokenizer from a seeded corpus; the student's takes it from the
larger model's folder (so a full rebuild runs ``large`` first), and the PRM, a copy of the larger
model, keeps it: the three bundled models share one tokenizer. (Rebuilding it is not enough to share
it: the ``tokenizers`` library has changed how it breaks ties between merges, so a rebuild under
another version can number the tokens differently.)
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from ..models.presets import BUNDLED_LARGE, BUNDLED_STUDENT
from ..problems.tinygsm import LEVELS, Problem, generate_problem, load_test_set
from .common import (LARGE_SIZE, STUDENT_SIZE, TOY_SIZE, LlamaSize, pad_batch, seed_everything, small_llama,
                     train_loop, use_all_cores)
from .tokenizer import STEP_TAG, build_tokenizer


@dataclass
class PolicyTrainConfig:
    name: str
    size: LlamaSize
    steps: int
    out_dir: Path
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0
    tokenizer_from: Path | None = None  # a model folder whose tokenizer to use (None: build it)
    quick: bool = False

    def apply_quick(self) -> None:
        self.size, self.steps, self.batch_size, self.quick = TOY_SIZE, 8, 4, True


STUDENT = PolicyTrainConfig("student", STUDENT_SIZE, steps=1400, out_dir=BUNDLED_STUDENT,
                            tokenizer_from=BUNDLED_LARGE)
LARGE = PolicyTrainConfig("large", LARGE_SIZE, steps=1400, out_dir=BUNDLED_LARGE)
RECIPES = {c.name: c for c in (STUDENT, LARGE)}


def recipe(name: str) -> PolicyTrainConfig:
    """A fresh copy of the named shipped recipe, to adjust before ``train_policy``."""
    return replace(RECIPES[name])


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


def bundled_tokenizer(quick: bool = False) -> PreTrainedTokenizerFast:
    """The tokenizer all bundled models share, trained on a fixed seeded corpus by the larger model's
    recipe: questions and solutions in the chat format, and in the PRM's input format, so that its step
    tag and ``+``/``-`` are single tokens."""
    stream = ProblemStream(1)
    texts = []
    for _ in range(300 if quick else 5000):
        p = stream.next()
        texts.append(p.question + "\n\n" + p.solution)
        texts.append(p.question + " " + " ки\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(p.steps))
                     + f" {STEP_TAG} + -")
    return build_tokenizer(texts)


def train_policy(cfg: PolicyTrainConfig) -> Path:
    """Build (or take) the tokenizer, train the policy and save both to ``cfg.out_dir``."""
    use_all_cores()
    seed_everything(cfg.seed)
    if cfg.tokenizer_from is None:
        tokenizer = bundled_tokenizer(cfg.quick)
    elif (cfg.tokenizer_from / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg.tokenizer_from)
        for key in ("is_local", "local_files_only"):  # how it was loaded, not part of it: keep the files equal
            tokenizer.init_kwargs.pop(key, None)
    else:
        raise SystemExit(f"no tokenizer in {cfg.tokenizer_from}: train the larger model first "
                         "(python -m reasoning_viz.train large), or pass --tokenizer-from")
    model = small_llama(tokenizer, cfg.size)
    print(f"{cfg.name}: {model.num_parameters() / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    stream = ProblemStream(cfg.seed)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        examples = [chat_example(tokenizer, stream.next()) for _ in range(cfg.batch_size)]
        return pad_batch([e[0] for e in examples], [e[1] for e in examples], tokenizer.pad_token_id)

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    losses = train_loop(model, next_batch, lambda m, batch: m(**batch).loss, cfg.steps, cfg.lr,
                        cfg.out_dir / "training_log.jsonl", desc=cfg.name)
    print(f"{cfg.name}: final loss {sum(losses[-50:]) / len(losses[-50:]):.4f} in {time.time() - start:.0f}s")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(cfg.out_dir)
    return cfg.out_dir
