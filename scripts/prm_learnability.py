"""Can the bundled PRM's architecture learn to check a step at all? A probe with exact labels.

    python scripts/prm_learnability.py [--steps 300] [--kinds result|any] [--paired] [--adapt 150]
                                       [--at-slip] [--extra-layers 2]

The PRM recipe (``python -m reasoning_viz.train prm``) learns from Monte-Carlo labels of sampled
solutions, which are noisy and few. This probe removes both limits: it fine-tunes the same model
(a copy of the policy, the same tag loss) on gold solutions with one step made wrong
(``perturb_step``), labelled exactly — the steps before the slip ``+``, the slip ``-`` — drawing
fresh problems for every batch. If the probe cannot learn to spot the slips, more or better MC
labels will not teach the real PRM either: the bottleneck is learning the check, not the labels.

``--at-slip`` makes the task as local as it can be: the only label is at the first wrong token
itself (``+`` on the right path at that position, ``-`` on the slipped one), and the score is read
there. The model then needs nothing but its own prediction of that token one position back.
``--extra-layers N`` stacks N new decoder layers on the policy (they start as the identity), so
that the finished prediction has layers above it in which to be compared with the token.

It prints the final loss next to the loss of a constant predictor (the labels' entropy: a loss at
that level means nothing was learnt), and on 300 fresh problems how often the correct step scores
above its slipped copy (0.5 is chance) and the step AUROC. Exact labels are used only here, never
to train the shipped PRM.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa: E402

from reasoning_viz.models.scorers import MathShepherdPRM  # noqa: E402
from reasoning_viz.problems.tinygsm import EQUATION  # noqa: E402
from reasoning_viz.train.common import POLICY_DIR, pad_batch, seed_everything, train_loop, use_all_cores  # noqa: E402
from reasoning_viz.train.evaluate import auroc  # noqa: E402
from reasoning_viz.train.policy import ProblemStream  # noqa: E402
from reasoning_viz.train.labels import SLIP_KINDS, LabeledPath, perturb_step  # noqa: E402
from reasoning_viz.train.prm import adapt_to_format, prm_example, tag_loss  # noqa: E402
from reasoning_viz.train.surprise import add_top_layers  # noqa: E402


def slipped_pair(stream: ProblemStream, rng: random.Random, kinds: tuple[str, ...]) -> tuple[LabeledPath, LabeledPath]:
    """A gold solution cut after a random working step, and its copy with that step made wrong."""
    while True:
        p = stream.next()
        working = [j for j, step in enumerate(p.steps) if EQUATION.search(step)]
        j = rng.choice(working)
        slipped = perturb_step(p.steps[j], rng, kinds)
        if slipped is not None and slipped != p.steps[j]:
            right = LabeledPath(p.question, list(p.steps[: j + 1]), [1.0] * (j + 1))
            return right, LabeledPath(p.question, [*p.steps[:j], slipped], [1.0] * j + [0.0])


def first_difference(a: list[int], b: list[int]) -> int:
    """The first position at which two token sequences differ (where the slip starts)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def encode_pair(prm: MathShepherdPRM, right: LabeledPath, slipped: LabeledPath) -> tuple[list[int], list[int], int]:
    """Both paths in the PRM's format, and the position of the first wrong token."""
    a, b = prm.encode(right.question, right.steps), prm.encode(slipped.question, slipped.steps)
    return a, b, first_difference(a, b)


def at_slip_examples(prm: MathShepherdPRM, right: LabeledPath, slipped: LabeledPath) -> list[tuple[list[int], list[float]]]:
    """Both paths with a single label at the first wrong token: ``+`` for the right one, ``-`` for the slip."""
    a, b, k = encode_pair(prm, right, slipped)
    return [(ids, [-100.0] * k + [label] + [-100.0] * (len(ids) - k - 1)) for ids, label in ((a, 1.0), (b, 0.0))]


@torch.inference_mode()
def surprise_win_rate(prm: MathShepherdPRM, pairs: list[tuple[LabeledPath, LabeledPath]]) -> float:
    """How often the model's own next-token probability puts the right token above the slipped one at
    the first wrong token: what it already knows, as a product of its prediction and the token seen."""
    wins = 0
    for right, slipped in pairs:
        a, b, k = encode_pair(prm, right, slipped)
        logits = prm.model(torch.tensor([a[:k]])).logits[0, -1]
        wins += bool(logits[a[k]] > logits[b[k]])
    return wins / len(pairs)


@torch.inference_mode()
def p_good_at(prm: MathShepherdPRM, ids: list[int], position: int) -> float:
    """P(``+``) read at any position of a sequence (the PRM itself reads it only at tags)."""
    logits = prm.model(torch.tensor([ids])).logits[0, position, prm.candidate_ids]
    return logits.softmax(-1)[0].item()


@torch.inference_mode()
def result_digit_accuracy(prm: MathShepherdPRM, stream: ProblemStream, n: int = 100, chat: bool = False) -> float:
    """How often the model, fed gold solutions in the PRM's format (or the policy's chat format),
    predicts every digit of a result: whether it still computes what the PRM must check."""
    tok, right, total = prm.tokenizer, 0, 0
    for _ in range(n):
        p = stream.next()
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p.question}], tokenize=False,
                                           add_generation_prompt=True) + p.solution
        else:
            text = prm.format(p.question, list(p.steps))
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        predicted = prm.model(torch.tensor([enc["input_ids"]])).logits[0].argmax(-1).tolist()
        for m in EQUATION.finditer(text):
            digits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if m.start(4) <= a < b <= m.end(4)]
            right += all(predicted[i - 1] == enc["input_ids"][i] for i in digits)
            total += 1
    return right / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps (batches of 32 paths)")
    ap.add_argument("--kinds", choices=("result", "any"), default="result",
                    help="result: only a wrong result; any: every kind perturb_step makes")
    ap.add_argument("--paired", action="store_true",
                    help="each slipped path shares its batch with its correct twin (else one or the other)")
    ap.add_argument("--adapt", type=int, default=0,
                    help="first, this many steps of next-token training on gold solutions in the PRM's format")
    ap.add_argument("--at-slip", action="store_true",
                    help="label and score only the first wrong token (and its right twin), not the tags")
    ap.add_argument("--extra-layers", type=int, default=0, help="stack this many new layers on the policy first")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, default=None, help="write the loss log (JSON lines) here")
    ap.add_argument("--quick", action="store_true", help="a smoke run in seconds (for tests): 2 steps, few problems")
    args = ap.parse_args()
    checked, pairs = (10, 10) if args.quick else (100, 300)
    if args.quick:
        args.steps, args.adapt = 2, min(args.adapt, 1)
    if args.steps < 1 or args.lr <= 0 or min(args.adapt, args.extra_layers) < 0:
        ap.error("--steps and --lr must be positive, --adapt and --extra-layers at least 0")
    kinds = ("result",) if args.kinds == "result" else SLIP_KINDS
    use_all_cores()
    seed_everything(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(POLICY_DIR)
    model = AutoModelForCausalLM.from_pretrained(POLICY_DIR)
    add_top_layers(model, args.extra_layers)
    prm = MathShepherdPRM(model, tokenizer)
    stream, rng = ProblemStream(args.seed + 2000), random.Random(args.seed)
    print(f"result digits right: {result_digit_accuracy(prm, ProblemStream(args.seed + 4000), checked, chat=True):.1%} "
          f"in the policy's chat format, {result_digit_accuracy(prm, ProblemStream(args.seed + 4000), checked):.1%} "
          "in the PRM's format")
    if args.adapt:
        adapt_to_format(prm, stream, args.adapt, args.lr, 32, None)
        print(f"after {args.adapt} adaptation steps: "
              f"{result_digit_accuracy(prm, ProblemStream(args.seed + 4000), checked):.1%}")
    test_stream, test_rng = ProblemStream(args.seed + 3000), random.Random(args.seed + 1)
    held_out = [slipped_pair(test_stream, test_rng, kinds) for _ in range(pairs)]
    print(f"its own next-token probability ranks the right token above the slipped one in "
          f"{surprise_win_rate(prm, held_out):.1%} of held-out pairs (what a check could read)")
    tags = {"+": 0, "-": 0}

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        examples: list[tuple[list[int], list[float]]] = []
        while len(examples) < 32:
            right, slipped = slipped_pair(stream, rng, kinds)
            if args.at_slip:  # always paired: alone, a wrong digit looks like any other digit
                examples += at_slip_examples(prm, right, slipped)
            else:
                paths = [right, slipped] if args.paired else [rng.choice((right, slipped))]
                examples += [prm_example(prm, path) for path in paths]
        for _, targets in examples:
            labels = [x for x in targets if x != -100]
            tags["+"] += sum(labels)
            tags["-"] += len(labels) - sum(labels)
        return pad_batch([e[0] for e in examples], [e[1] for e in examples], tokenizer.pad_token_id,
                         label_dtype=torch.float)

    losses = train_loop(model, next_batch, partial(tag_loss, candidates=prm.candidate_ids), args.steps,
                        args.lr, args.log, desc="probe", warmup=30)
    q = tags["-"] / (tags["+"] + tags["-"])
    constant = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    tail = losses[-50:]
    print(f"final loss {sum(tail) / len(tail):.3f} (constant predictor {constant:.3f}, labels {q:.1%} '-')")

    wins, scores, labels = 0, [], []
    for right, slipped in held_out:
        if args.at_slip:
            a, b, k = encode_pair(prm, right, slipped)
            good, bad = p_good_at(prm, a, k), p_good_at(prm, b, k)
        else:
            s_right, s_slipped = prm.score(right.question, [right.steps, slipped.steps])
            prm.reset()
            good, bad = s_right[-1], s_slipped[-1]
        wins += good > bad
        scores += [good, bad]
        labels += [True, False]
    print(f"held out: correct step above its slipped copy {wins / pairs:.1%} (chance 50%), "
          f"AUROC {auroc(scores, labels):.3f}")


if __name__ == "__main__":
    main()
