"""How far is a PRM with a surprise stage from the check it is built to read? Three verifiers, one set of samples.

    python scripts/surprise_report.py [--prm DIR] [--per-level 20] [--seed 0] [--quick]

DIR is a PRM with a surprise stage (the default recipe of ``python -m reasoning_viz.train prm``, so the
bundled one too, or the recipe before with ``--surprise-layers``): its first layers are the format-adapted
copy of the policy, frozen, and the layers above it put that copy's probability of each token into P(+)
there. For held-out problems it samples 16 solutions each at the app's temperature and scores every path
three ways:

1. ``base surprise``: the lowest probability the frozen base gives any token the policy wrote, read
   in the PRM's input format (the running minimum up to each step). This is the target, and the
   ceiling of what the surprise stage can give.
2. ``PRM at tokens``: the same running minimum of the PRM's P(+) read at every one of those tokens
   (what the surprise stage fits directly).
3. ``PRM at tags``: P(+) at each step tag, what the app reads (best-of-16 by the last and by the
   weakest step).

For each it prints best-of-16 accuracy next to majority@16 and the step AUROC against the exact
step checker (``reference_step_labels``), the same measures as ``python -m reasoning_viz.train
evaluate``.
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
from transformers import AutoConfig  # noqa: E402

from reasoning_viz.models.generator import SamplingParams, StepGenerator  # noqa: E402
from reasoning_viz.models.loading import BUNDLED_POLICY, BUNDLED_PRM, load_causal_lm  # noqa: E402
from reasoning_viz.models.scorers import MathShepherdPRM  # noqa: E402
from reasoning_viz.problems.grading import answers_match, extract_boxed  # noqa: E402
from reasoning_viz.problems.tinygsm import load_test_set, reference_step_labels  # noqa: E402
from reasoning_viz.train.common import seed_everything, use_all_cores  # noqa: E402
from reasoning_viz.train.evaluate import auroc  # noqa: E402
from reasoning_viz.train.labels import split_steps  # noqa: E402
from reasoning_viz.train.surprise import base_token_probs, surprise_mask  # noqa: E402

SAMPLES, TEMPERATURE = 16, 1.7  # the evaluation's best-of-16 at the app's default temperature


@torch.inference_mode()
def running_minima(prm: MathShepherdPRM, n_base: int, question: str, steps: list[str]) -> dict[str, list[float]]:
    """Per step: the base's surprise and the PRM's token P(+), each a running minimum, and the tag P(+)."""
    ids = prm.encode(question, steps)
    batch = torch.tensor([ids])
    out = prm.model(batch, output_hidden_states=True)
    base = base_token_probs(prm.model, out.hidden_states[n_base], batch)[0]
    p_plus = out.logits[0][:, prm.candidate_ids].softmax(-1)[:, 0]
    mask = surprise_mask(prm, question, ids)
    low_base, low_prm = 1.0, 1.0
    scores: dict[str, list[float]] = {"base surprise": [], "PRM at tokens": [], "PRM at tags": []}
    for i, token in enumerate(ids):
        if mask[i]:
            low_base = min(low_base, base[i].item())
            low_prm = min(low_prm, p_plus[i].item())
        if token == prm.step_tag_id:
            scores["base surprise"].append(low_base)
            scores["PRM at tokens"].append(low_prm)
            scores["PRM at tags"].append(p_plus[i].item())
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prm", type=Path, default=BUNDLED_PRM, help="a PRM with surprise layers (default: bundled)")
    ap.add_argument("--per-level", type=int, default=20, help="held-out problems per level")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one problem per level, for the tests")
    args = ap.parse_args()
    if args.per_level < 1:
        ap.error("--per-level must be at least 1")
    if not (args.prm / "config.json").is_file():
        ap.error(f"no model at {args.prm}")
    n_base = getattr(AutoConfig.from_pretrained(args.prm), "surprise_base_layers", None)
    if n_base is None:
        ap.error(f"{args.prm} has no surprise stage (the default recipe of python -m reasoning_viz.train prm has one)")
    use_all_cores()
    seed_everything(args.seed)
    policy, tokenizer = load_causal_lm(BUNDLED_POLICY)
    model, prm_tokenizer = load_causal_lm(args.prm)
    prm = MathShepherdPRM(model, prm_tokenizer)
    generator = StepGenerator(policy, tokenizer, memory_budget_mb=2048)
    rng = torch.Generator().manual_seed(args.seed)
    params = SamplingParams(temperature=TEMPERATURE, max_step_tokens=160, stop_at_step=False)
    per_level = 1 if args.quick else args.per_level
    problems = [p for level in range(1, 7) for p in [q for q in load_test_set() if q.level == level][:per_level]]

    wins: Counter[str] = Counter()
    steps_scored: dict[str, list[float]] = {"base surprise": [], "PRM at tokens": [], "PRM at tags": []}
    step_labels: list[bool] = []
    for problem in tqdm(problems, desc="problems"):
        outs = generator.expand([generator.prompt_ids(problem.question)], SAMPLES, params, generator=rng)[0]
        paths = [split_steps(o.text) or [""] for o in outs]
        answers = [extract_boxed(o.text) for o in outs]
        right = [a is not None and answers_match(a, problem.answer) for a in answers]
        finished = [i for i, a in enumerate(answers) if a is not None]
        per_path = [running_minima(prm, n_base, problem.question, path) for path in paths]
        for path, scores in zip(paths, per_path):
            step_labels += reference_step_labels(problem, path)
            for name in steps_scored:
                steps_scored[name] += scores[name]
        if not finished:
            continue
        vote = Counter(answers[i] for i in finished).most_common(1)[0][0]
        wins["majority@16"] += answers_match(vote, problem.answer)
        for name in steps_scored:
            wins[f"{name}, last"] += right[max(finished, key=lambda i: per_path[i][name][-1])]
        wins["PRM at tags, min"] += right[max(finished, key=lambda i: min(per_path[i]["PRM at tags"]))]

    print(f"{len(problems)} held-out problems ({per_level} per level), {SAMPLES} samples each at "
          f"temperature {TEMPERATURE}, seed {args.seed}")
    print(f"  majority@16: {100 * wins['majority@16'] / len(problems):.1f}%")
    for name, scores in steps_scored.items():
        extra = f", weakest step {100 * wins[f'{name}, min'] / len(problems):.1f}%" if name == "PRM at tags" else ""
        print(f"  {name:14s} best-of-16 (last) {100 * wins[f'{name}, last'] / len(problems):5.1f}%{extra}; "
              f"step AUROC {auroc(scores, step_labels):.3f}")


if __name__ == "__main__":
    main()
