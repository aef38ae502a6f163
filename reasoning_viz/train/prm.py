"""Train the bundled PRM the way Math-Shepherd does, on solutions sampled from *our* policy.

1. Sample solutions to fresh training problems from the bundled policy.
2. Label every step by Monte-Carlo rollouts: from the prefix ending at that step, K completions;
   the step is good (``+``) when **any** rollout reaches the gold answer ("hard estimation").
   Why hard rather than soft labels: in TinyGSM a wrong intermediate result is never recovered
   from (later steps build on it), so any rollout reaching the gold is near-certain evidence the
   step is right, while a soft fraction would also fall with the *remaining* difficulty of a
   correct step and blur the signal the PRM is meant to carry.
3. Fine-tune a copy of the policy as a causal LM whose logits at each ``ки`` tag are trained,
   two-way, towards ``+`` or ``-`` — exactly what Math-Shepherd's inference reads back.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..models.generator import SamplingParams, StepGenerator, encode_steps
from ..models.scorers import MathShepherdPRM
from ..problems.grading import answers_match, extract_boxed
from .common import POLICY_DIR, PRM_DIR, pad_batch, seed_everything, train_loop, use_all_cores
from .policy import ProblemStream


@dataclass
class PRMTrainConfig:
    seed: int = 0
    problems: int = 1200  # training problems to sample solutions for
    samples_per_problem: int = 2
    sample_temperature: float = 1.7  # the app's default for the bundled policy: score what users see
    rollout_temperature: float = 1.0  # cooler rollouts rarely miss the gold from a correct step
    rollouts: int = 6  # K completions per step
    max_solution_tokens: int = 256
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    policy_dir: Path = POLICY_DIR
    out_dir: Path = PRM_DIR
    quick: bool = False

    def apply_quick(self) -> None:
        self.problems, self.samples_per_problem, self.rollouts, self.steps, self.batch_size = 6, 2, 2, 4, 4
        self.max_solution_tokens = 24


def split_steps(solution: str) -> list[str]:
    """A model's solution as a list of non-empty steps (paragraphs)."""
    return [s.strip() for s in solution.split("\n\n") if s.strip()]


@dataclass
class LabeledPath:
    question: str
    steps: list[str]
    labels: list[int]  # 1 = good step (+), 0 = bad step (-)


def label_paths(generator: StepGenerator, stream: ProblemStream, cfg: PRMTrainConfig) -> list[LabeledPath]:
    """Sample policy solutions and label each step by MC rollouts (hard estimation)."""
    tok = generator.tokenizer
    rng = torch.Generator().manual_seed(cfg.seed)
    sample = SamplingParams(temperature=cfg.sample_temperature, max_step_tokens=cfg.max_solution_tokens,
                            stop_at_step=False)
    rollout = SamplingParams(temperature=cfg.rollout_temperature, max_step_tokens=cfg.max_solution_tokens,
                             stop_at_step=False)
    problems = [stream.next() for _ in range(cfg.problems)]
    per_call = 8
    labeled: list[LabeledPath] = []
    for lo in tqdm(range(0, len(problems), per_call), desc="prm labels", dynamic_ncols=True):
        batch = problems[lo:lo + per_call]
        prompts = [generator.prompt_ids(p.question) for p in batch]
        solutions = generator.expand(prompts, cfg.samples_per_problem, sample, generator=rng)
        prefixes, owners, paths = [], [], []
        for prob, prompt, sols in zip(batch, prompts, solutions):
            for sol in sols:
                steps = split_steps(sol.text)
                if not steps:
                    continue
                labels = [0] * len(steps)
                paths.append((prob, steps, labels))
                for j, step in enumerate(steps):
                    boxed = extract_boxed(step)
                    if boxed is not None or j == len(steps) - 1:  # the final step: its answer decides
                        labels[j] = int(answers_match(boxed, prob.answer))
                        continue
                    prefixes.append(prompt + encode_steps(tok, steps[: j + 1]))
                    owners.append((len(paths) - 1, j))
        if prefixes:
            rollouts = generator.expand(prefixes, cfg.rollouts, rollout, generator=rng)
            for (i, j), rolls in zip(owners, rollouts):
                gold = paths[i][0].answer
                paths[i][2][j] = int(any(answers_match(extract_boxed(r.text), gold) for r in rolls))
        labeled.extend(LabeledPath(p.question, steps, labels) for p, steps, labels in paths)
    return labeled


def prm_example(prm: MathShepherdPRM, path: LabeledPath) -> tuple[list[int], list[int]]:
    """Input ids in the PRM format and targets (+/- token id) at each step tag, -100 elsewhere."""
    ids = prm.encode(path.question, path.steps)
    good, bad = prm.candidate_ids
    targets = [-100] * len(ids)
    tags = [i for i, t in enumerate(ids) if t == prm.step_tag_id]
    for pos, label in zip(tags, path.labels):
        targets[pos] = good if label else bad
    return ids, targets


def train_prm(cfg: PRMTrainConfig) -> Path:
    """Label policy samples by rollouts, fine-tune the PRM, save it to ``cfg.out_dir``."""
    use_all_cores()
    seed_everything(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(cfg.policy_dir).eval()
    generator = StepGenerator(policy, tokenizer, memory_budget_mb=512)
    start = time.time()
    paths = label_paths(generator, ProblemStream(cfg.seed + 1000), cfg)
    n_steps = sum(len(p.labels) for p in paths)
    n_good = sum(sum(p.labels) for p in paths)
    print(f"prm: labelled {n_steps} steps of {len(paths)} sampled solutions "
          f"({n_good / max(1, n_steps):.1%} good) in {time.time() - start:.0f}s")

    model = AutoModelForCausalLM.from_pretrained(cfg.policy_dir)  # Math-Shepherd starts from the policy
    prm = MathShepherdPRM(model, tokenizer)
    examples = [prm_example(prm, p) for p in paths]
    rng = random.Random(cfg.seed)
    candidates = torch.tensor(prm.candidate_ids)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        chosen = [examples[rng.randrange(len(examples))] for _ in range(cfg.batch_size)]
        return pad_batch([c[0] for c in chosen], [c[1] for c in chosen], tokenizer.pad_token_id)

    def tag_loss(model, batch) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        at = batch["labels"] != -100
        two_way = logits[at][:, candidates]  # (tags, 2): logits of "+" and "-"
        target = (batch["labels"][at] == candidates[1]).long()  # 0 = "+", 1 = "-"
        return torch.nn.functional.cross_entropy(two_way, target)

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    losses = train_loop(model, next_batch, tag_loss, cfg.steps, cfg.lr, cfg.out_dir / "training_log.jsonl",
                        desc="prm", warmup=30)
    print(f"prm: final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, total {time.time() - start:.0f}s")
    model.save_pretrained(cfg.out_dir, safe_serialization=True)
    tokenizer.save_pretrained(cfg.out_dir)
    return cfg.out_dir
