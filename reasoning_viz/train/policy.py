"""Train a bundled policy: a small Llama fitted to TinyGSM gold solutions (loss on the answer only).

One recipe, two shipped models that differ only in size and in the student's slips (``STUDENT``, ``LARGE``):

- the **student** (``python -m reasoning_viz.train student``), the app's default policy: small and
  briefly trained, so its arithmetic is only approximately right and it errs more the longer the chain
  and the larger the numbers — the way a small real model errs. 30% of its training solutions carry one
  slip (``with_slip``: a result off by 1, 2 or 10, not learnt, that the later steps carry on from), so
  that its answer follows what it wrote, as a real model's does (more often, not always: its card
  has the counts);
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
from ..problems.tinygsm import (EQUATION, LEVELS, MAX_VALUE, STEP_DELIMITER, Problem, apply_op,
                                generate_problem, load_test_set)
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
    slips: float = 0.0  # share of training solutions with one wrong result that later steps carry on from
    quick: bool = False

    def apply_quick(self) -> None:
        self.size, self.steps, self.batch_size, self.quick = TOY_SIZE, 8, 4, True


STUDENT = PolicyTrainConfig("student", STUDENT_SIZE, steps=1400, out_dir=BUNDLED_STUDENT,
                            tokenizer_from=BUNDLED_LARGE, slips=0.3)
LARGE = PolicyTrainConfig("large", LARGE_SIZE, steps=1400, out_dir=BUNDLED_LARGE)
RECIPES = {c.name: c for c in (STUDENT, LARGE)}


def recipe(name: str) -> PolicyTrainConfig:
    """A fresh copy of the named shipped recipe, to adjust before ``train_policy``."""
    return replace(RECIPES[name])


def chat_example(tokenizer, problem: Problem, unlearned: tuple[int, int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of one chat-formatted problem and labels that train only the assistant's reply, and
    none of its tokens that touch the characters ``unlearned`` (start, end) of the solution."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem.question}],
                                           tokenize=False, add_generation_prompt=True)
    reply = tokenizer(problem.solution + tokenizer.eos_token, add_special_tokens=False, return_offsets_mapping=True)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_labels = [t if unlearned is None or end <= unlearned[0] or start >= unlearned[1] else -100
                for t, (start, end) in zip(reply["input_ids"], reply["offset_mapping"])]
    return p_ids + reply["input_ids"], [-100] * len(p_ids) + r_labels


def with_slip(problem: Problem, rng: random.Random) -> tuple[Problem, tuple[int, int]] | None:
    """The problem with one working step's result written wrong (off by 1, 2 or 10, as a small model
    slips) and every later step, and the answer, carried on from the wrong value; and where that wrong
    result stands in the solution, so that it is not learnt. None when no slip keeps the wrong result
    positive and every quantity after it a whole number in range (the wrong result itself may pass the
    level's largest number by up to 10).

    Why: trained on gold solutions alone, where the written results and the question always agree, the
    student learns to track the running value from the question as well as from its own lines, and a
    slipped step is often silently undone a step later (``72 - 57 = 19``, then ``69 / 5 = 13``). A real
    model's answer follows what it wrote; chains that carry on from a slip teach that, in part."""
    parsed = [EQUATION.search(step) for step in problem.steps]
    j = rng.randrange(len(parsed))
    for delta in rng.sample((-10, -2, -1, 1, 2, 10), 6):
        value = int(parsed[j][4]) + delta
        steps, ok = list(problem.steps[:j]), value >= 1
        steps.append(problem.steps[j][: parsed[j].start(4)] + str(value))
        for m, step in zip(parsed[j + 1:], problem.steps[j + 1:]):
            op, b = m[2], int(m[3])
            ok = ok and (op != "/" or value % b == 0)
            new = apply_op(value, op, b)
            ok = ok and 1 <= new <= MAX_VALUE[problem.level]
            steps.append(f"{step[: m.start(1)]}{value} {op} {b} = {new}")
            value = new
        if ok:
            slipped = Problem(problem.id, problem.level, problem.question, tuple(steps), value)
            start = len(STEP_DELIMITER.join(steps[:j])) + (len(STEP_DELIMITER) if j else 0) + parsed[j].start(4)
            return slipped, (start, start + len(steps[j]) - parsed[j].start(4))
    return None



def training_example(tokenizer, problem: Problem, slips: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """One training example: with probability ``slips`` the problem with a slip (``with_slip``), its
    wrong result not learnt; otherwise the gold solution."""
    slipped = with_slip(problem, rng) if rng.random() < slips else None
    return chat_example(tokenizer, *slipped) if slipped else chat_example(tokenizer, problem)

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
    slip_rng = random.Random(cfg.seed + 1)  # its own stream: the problems drawn do not depend on ``slips``

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        examples = [training_example(tokenizer, stream.next(), cfg.slips, slip_rng) for _ in range(cfg.batch_size)]
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
