"""How much of the policy's surprise survives when its next-token prediction is squeezed into r numbers?

    python scripts/surprise_bottleneck.py [--per-level 20] [--ranks 16,32,64,128] [--seed 0] [--quick]

Why this matters. A PRM built on the policy can only notice its own surprise at token t if the
prediction made one position earlier reaches position t, and in a Llama layer that happens through
attention values: ``num_key_value_heads * head_dim`` numbers per layer (2 x 32 = 64 in the bundled
models). This script measures what such a channel could carry at best. For held-out problems it samples
16 solutions each at the app's temperature, records the policy's full next-token distribution at every
token it wrote, replaces each distribution by its best rank-``r`` reconstruction (PCA over all those
positions, fitted on the very samples it is scored on, so every figure is an upper bound), and scores a
path by the lowest reconstructed probability of any token it wrote (the running minimum up to each
step). It prints best-of-16 accuracy next to majority@16 and the step AUROC against the exact step
checker, for the exact distribution and for each rank, the code computed in float64 and again in
float32 (the precision a network computes in).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from reasoning_viz.models.generator import SamplingParams, StepGenerator  # noqa: E402
from reasoning_viz.models.loading import BUNDLED_POLICY, load_causal_lm  # noqa: E402
from reasoning_viz.problems.grading import answers_match, extract_boxed  # noqa: E402
from reasoning_viz.problems.tinygsm import load_test_set, reference_step_labels  # noqa: E402
from reasoning_viz.train.common import seed_everything, use_all_cores  # noqa: E402
from reasoning_viz.train.evaluate import auroc  # noqa: E402
from reasoning_viz.train.labels import split_steps  # noqa: E402

SAMPLES, TEMPERATURE = 16, 1.7  # the evaluation's best-of-16 at the app's default temperature


def steps_and_ends(tokenizer, token_ids: list[int]) -> tuple[list[str], list[int]]:
    """A sample's steps, and for each the number of its tokens up to and including the step's last
    character (both read from one decoding, so every step is found in it)."""
    lengths = [len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True)) for i in range(len(token_ids))]
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    steps = split_steps(text)
    if not steps:
        return [""], [len(token_ids)]
    ends, cursor = [], 0
    for step in steps:
        cursor = text.index(step, cursor) + len(step)
        ends.append(next((i + 1 for i, n in enumerate(lengths) if n >= cursor), len(token_ids)))
    return steps, ends


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-level", type=int, default=20, help="held-out problems per level")
    ap.add_argument("--ranks", default="16,32,64,128", help="comma-separated code sizes to try")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one problem per level, for the tests")
    args = ap.parse_args()
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
    except ValueError:
        ap.error(f"--ranks must be comma-separated integers, got {args.ranks!r}")
    if args.per_level < 1 or any(r < 1 for r in ranks):
        ap.error("--per-level and every rank must be at least 1")
    use_all_cores()
    seed_everything(args.seed)
    policy, tokenizer = load_causal_lm(BUNDLED_POLICY)
    if max(ranks) > policy.config.vocab_size:
        ap.error(f"a rank can be at most the vocabulary size, {policy.config.vocab_size}")
    generator = StepGenerator(policy, tokenizer, memory_budget_mb=2048)
    rng = torch.Generator().manual_seed(args.seed)
    params = SamplingParams(temperature=TEMPERATURE, max_step_tokens=160, stop_at_step=False)
    per_level = 1 if args.quick else args.per_level
    problems = [p for level in range(1, 7) for p in [q for q in load_test_set() if q.level == level][:per_level]]

    # One row per policy-written token: its distribution and the token; per path the step boundaries.
    distributions, written, paths = [], [], []
    for problem in tqdm(problems, desc="problems"):
        prompt = generator.prompt_ids(problem.question)
        for out in generator.expand([prompt], SAMPLES, params, generator=rng)[0]:
            with torch.inference_mode():
                logits = policy(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1]
            steps, ends = steps_and_ends(tokenizer, out.token_ids)
            paths.append(dict(problem=problem, answer=extract_boxed(out.text), start=len(written), ends=ends,
                              labels=reference_step_labels(problem, steps)))
            distributions.append(logits.float().softmax(-1))
            written += out.token_ids
    probs = torch.cat(distributions).double()  # double for the PCA fit: float32 resolves its small axes poorly
    del distributions
    token = torch.tensor(written)

    def report(name: str, p_written: torch.Tensor) -> None:
        scores, labels, finals = [], [], []
        for path in paths:
            p = p_written[path["start"]: path["start"] + path["ends"][-1]]
            running = torch.cummin(p, 0).values if len(p) else torch.ones(1)
            scores += [running[max(end, 1) - 1].item() for end in path["ends"]]
            labels += path["labels"]
            finals.append(scores[-1])
        wins: Counter[str] = Counter()
        for g, problem in enumerate(problems):
            group = range(g * SAMPLES, (g + 1) * SAMPLES)
            finished = [i for i in group if paths[i]["answer"] is not None]
            if not finished:
                continue
            vote = Counter(paths[i]["answer"] for i in finished).most_common(1)[0][0]
            wins["majority"] += answers_match(vote, problem.answer)
            best = max(finished, key=lambda i: finals[i])
            wins["best"] += answers_match(paths[best]["answer"], problem.answer)
        n = len(problems)
        print(f"  {name:30s} best-of-16 {100 * wins['best'] / n:5.1f}% (majority@16 {100 * wins['majority'] / n:.1f}%); "
              f"step AUROC {auroc(scores, labels):.3f}")

    print(f"{len(problems)} held-out problems ({per_level} per level), {SAMPLES} samples each at temperature "
          f"{TEMPERATURE}, seed {args.seed}; {len(token)} policy-written tokens")
    report("exact distribution", probs.gather(1, token[:, None])[:, 0])
    mean = probs.mean(0)
    probs -= mean  # centred in place: this matrix is the largest thing held
    _, eigenvectors = torch.linalg.eigh(probs.T @ probs)  # ascending: the principal axes come last
    for r in ranks:
        basis = eigenvectors[:, -r:]  # (vocabulary, r)
        code = probs @ basis  # what an r-number channel would carry for each token position
        reconstructed = mean[token] + (code * basis[token]).sum(-1)  # only each written token's entry
        report(f"rank-{r} code (in-sample PCA)", reconstructed)
        # The same code computed in float32, a network's precision: does the channel lose the tiny
        # probabilities that tell a slip from a sure token? (Measured: no.)
        basis32 = basis.float()
        code32 = probs.float() @ basis32
        report(f"rank-{r} code, float32", mean.float()[token] + (code32 * basis32[token]).sum(-1))

if __name__ == "__main__":
    main()
