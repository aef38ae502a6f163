"""``python -m reasoning_viz.train {policy,prm,evaluate}``: rebuild and evaluate the bundled models."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reasoning_viz.train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("policy", "train the policy model"), ("prm", "train the PRM (needs the policy)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--quick", action="store_true", help="a toy run in seconds (for tests)")
        p.add_argument("--out", type=Path, help="output folder (default: assets/models/...)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, help="optimiser steps (default: the shipped recipe)")
        if name == "prm":
            p.add_argument("--policy", type=Path, help="policy folder to sample from")
            p.add_argument("--problems", type=int, help="training problems to label (default: the shipped recipe)")
            p.add_argument("--perturbed-per-path", type=int, default=0,
                           help="contrastive copies with one step made wrong, per sampled path (default 0)")
            p.add_argument("--format-steps", type=int,
                           help="next-token steps on gold solutions in the PRM's format before the tag training")
            p.add_argument("--code-rank", type=int,
                           help="first a layer fitted by regression to write this many numbers coding the base's "
                                "next-token prediction (default 64; 0: none)")
            p.add_argument("--compare-steps", type=int,
                           help="regression steps of the layer that reads the base's surprise from that code, "
                                "before the tag layer (default 4000; 0 with --surprise-layers 0: the plain "
                                "Math-Shepherd fine-tune of every layer)")
            p.add_argument("--surprise-layers", type=int,
                           help="with --compare-steps 0: new top layers trained on the surprise loss instead "
                                "(the recipe before; default 0)")
            p.add_argument("--surprise-steps", type=int, help="steps on the surprise loss before the tags train")
            p.add_argument("--batch-size", type=int, help="paths per step in the surprise and tag stages")
            p.add_argument("--labels-cache", type=Path,
                           help="JSON file of labelled paths: reused when it exists, written otherwise")
    e = sub.add_parser("evaluate", help="evaluation table on the held-out set")
    e.add_argument("--policy", type=Path)
    e.add_argument("--prm", type=Path)
    e.add_argument("--samples", type=int, default=64, help="samples per problem (n)")
    e.add_argument("--limit", type=int, help="problems per level (default: all)")
    e.add_argument("--temperature", type=float)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    for flag in ("policy", "prm"):  # a model folder given by hand: refuse a wrong one before minutes of work
        folder = getattr(args, flag, None)
        if folder is not None and not (folder / "config.json").is_file():
            parser.error(f"--{flag} {folder}: no model there (a folder with config.json, as --out writes)")
    if args.command == "evaluate" and args.samples < 64:
        parser.error(f"--samples {args.samples}: coverage@64 needs at least 64 samples per problem")

    if args.command == "policy":
        from .policy import PolicyTrainConfig, train_policy

        cfg = PolicyTrainConfig(seed=args.seed, quick=args.quick)
        if args.quick:
            cfg.steps, cfg.batch_size = 8, 4
        if args.steps:
            cfg.steps = args.steps
        if args.out:
            cfg.out_dir = args.out
        print(f"saved to {train_policy(cfg)}")
    elif args.command == "prm":
        from .prm import PRMTrainConfig, train_prm

        cfg = PRMTrainConfig(seed=args.seed, quick=args.quick)
        if args.quick:
            cfg.apply_quick()
        if args.steps:
            cfg.steps = args.steps
        if args.out:
            cfg.out_dir = args.out
        if args.policy:
            cfg.policy_dir = args.policy
        if args.problems is not None:
            cfg.problems = args.problems
        if args.format_steps is not None:
            cfg.format_steps = args.format_steps
        if args.compare_steps is not None:
            cfg.compare_steps = args.compare_steps
        if args.surprise_layers is not None:
            cfg.surprise_layers = args.surprise_layers
        if not (cfg.compare_steps or cfg.surprise_layers) and args.code_rank is None:
            cfg.code_rank = 0  # the code layer belongs to the surprise stage
        if args.surprise_steps is not None:
            cfg.surprise_steps = args.surprise_steps
        if args.code_rank is not None:
            cfg.code_rank = args.code_rank
        if args.batch_size is not None:
            cfg.batch_size = args.batch_size
        cfg.labels_cache = args.labels_cache
        cfg.perturbed_per_path = args.perturbed_per_path
        print(f"saved to {train_prm(cfg)}")
    else:
        from .evaluate import EvalConfig, evaluate

        cfg = EvalConfig(samples=args.samples, limit=args.limit, seed=args.seed)
        if args.policy:
            cfg.policy_dir = args.policy
        if args.prm:
            cfg.prm_dir = args.prm
        if args.temperature is not None:
            cfg.temperature = args.temperature
        table = evaluate(cfg)
        print(table)
        if args.markdown:
            args.markdown.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
