"""``python -m reasoning_viz.train {student,large,prm,evaluate}``: rebuild and evaluate the bundled models.

The student takes the larger model's tokenizer, and the PRM needs both policies (it is built on the
larger model and labelled by the student), so a full rebuild runs ``large``, ``student``, then ``prm``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reasoning_viz.train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("student", "train the small student policy (the app's default)"),
                            ("large", "train the larger policy (the PRM's base)"),
                            ("prm", "train the PRM (needs both policies)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--quick", action="store_true", help="a toy run in seconds (for tests)")
        p.add_argument("--out", type=Path, help="output folder (default: assets/models/...)")
        p.add_argument("--seed", type=int, help="default: the shipped recipe's")
        p.add_argument("--steps", type=int, help="optimiser steps (default: the shipped recipe)")
    sub.choices["student"].add_argument(
        "--tokenizer-from", type=Path, help="model folder whose tokenizer to use (default: the bundled larger model)")
    prm = sub.choices["prm"]
    prm.add_argument("--student", type=Path, help="student folder to sample and roll out (default: the bundled one)")
    prm.add_argument("--base", type=Path, help="larger model to build the PRM on (default: the bundled one)")
    prm.add_argument("--problems", type=int, help="training problems to label (default: the shipped recipe)")
    prm.add_argument("--labels-cache", type=Path,
                     help="JSON file of labelled paths: reused when it holds the same labelling, written otherwise")
    e = sub.add_parser("evaluate", help="the bundled models' report card on the held-out set")
    e.add_argument("--student", type=Path)
    e.add_argument("--large", type=Path)
    e.add_argument("--prm", type=Path)
    e.add_argument("--samples", type=int, default=64, help="samples per problem (n)")
    e.add_argument("--limit", type=int, help="problems per level (default: all)")
    e.add_argument("--temperature", type=float)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    for flag in ("student", "large", "base", "prm", "tokenizer_from"):  # a model folder given by hand: refuse a wrong one early
        folder = getattr(args, flag, None)
        if isinstance(folder, Path) and not (folder / "config.json").is_file():
            parser.error(f"--{flag.replace('_', '-')} {folder}: no model there (a folder with config.json, as --out writes)")
    if args.command == "evaluate" and args.samples < 64:
        parser.error(f"--samples {args.samples}: coverage@64 needs at least 64 samples per problem")

    if args.command in ("student", "large"):
        from .policy import recipe, train_policy

        cfg = recipe(args.command)
        if args.seed is not None:
            cfg.seed = args.seed
        if args.quick:
            cfg.apply_quick()
        if args.steps:
            cfg.steps = args.steps
        if args.out:
            cfg.out_dir = args.out
        if getattr(args, "tokenizer_from", None):
            cfg.tokenizer_from = args.tokenizer_from
        print(f"saved to {train_policy(cfg)}")
    elif args.command == "prm":
        from .prm import PRMTrainConfig, train_prm

        cfg = PRMTrainConfig()
        if args.seed is not None:
            cfg.seed = cfg.labels.seed = args.seed
        if args.quick:
            cfg.apply_quick()
        if args.steps:
            cfg.steps = args.steps
        if args.out:
            cfg.out_dir = args.out
        if args.student:
            cfg.labels.student_dir = args.student
        if args.base:
            cfg.base_dir = args.base
        if args.problems is not None:
            cfg.labels.problems = args.problems
        cfg.labels.cache = args.labels_cache
        print(f"saved to {train_prm(cfg)}")
    else:
        from .evaluate import EvalConfig, evaluate

        cfg = EvalConfig(samples=args.samples, limit=args.limit, seed=args.seed)
        for flag, attr in (("student", "student_dir"), ("large", "large_dir"), ("prm", "prm_dir")):
            if getattr(args, flag):
                setattr(cfg, attr, getattr(args, flag))
        if args.temperature is not None:
            cfg.temperature = args.temperature
        report = evaluate(cfg)
        print(report)
        if args.markdown:
            args.markdown.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
