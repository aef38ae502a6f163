"""``python -m reasoning_viz {solve,eval,bench,lab,prm-flags}``: the engine from a terminal.

  solve  a question -> the chosen answer; optionally the tree as JSON and an offline HTML figure
  eval   strategies over the held-out TinyGSM set: accuracy, tokens and seconds per problem
  bench  the batched step generator against plain ``generate`` calls, and the PRM's cost by depth
  lab    the scaling lab: accuracy against N per strategy and level; writes the data, figures and tables
  prm-flags  the command that serves a PRM with vLLM (Math-Shepherd-format or Qwen2.5-Math-PRM), for ``--prm-url``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def parse_params(strategy: str, pairs: list[str], base: dict[str, Any] | None = None,
                 shared: list[str] = ()) -> Any:
    """A strategy's hyperparameter dataclass: defaults, then ``base``, then ``key=value`` strings.

    ``shared`` pairs come first and skip keys this strategy lacks (one ``--set`` given to several
    strategies); ``pairs`` must all fit.
    """
    from .service import make_params
    from .strategies import STRATEGIES

    fields = {f.name for f in dataclasses.fields(STRATEGIES[strategy].params)}
    values: dict[str, Any] = {k: v for k, v in (base or {}).items() if k in fields}
    for pair, optional in [*((p, True) for p in shared), *((p, False) for p in pairs)]:
        key, sep, raw = pair.partition("=")
        if sep and key not in fields and optional:
            continue
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: {strategy} takes {', '.join(sorted(fields))} (as key=value)")
        values[key] = raw
    try:  # the app's parser: the same text gives the same hyperparameters in the app and here
        return make_params(strategy, values)
    except ValueError as exc:
        raise SystemExit(f"invalid hyperparameters: {exc}") from None


# What ``eval --strategy all`` compares: every strategy, plus the variants the README's claims are
# about (a single *sampled* chain is the baseline; majority and PRM-weighted votes side by side).
ALL_EVAL_ROWS = ("cot", "cot:greedy=false", "best_of_n", "self_consistency", "self_consistency:vote=weighted",
                 "cot_decoding", "beam_search", "dvts", "mcts", "fast_slow")


def parse_eval_rows(spec: str) -> list[tuple[str, list[str]]]:
    """``"all"`` or ``"name[:key=value[:key=value]],..."`` -> [(strategy, ["key=value", ...]), ...]."""
    from .strategies import STRATEGIES

    rows = []
    for item in ALL_EVAL_ROWS if spec == "all" else [x.strip() for x in spec.split(",") if x.strip()]:
        name, *pairs = item.split(":")
        if name not in STRATEGIES:
            raise SystemExit(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)} or 'all'")
        rows.append((name, pairs))
    if not rows:
        raise SystemExit("--strategy: name at least one strategy, or 'all'")
    return rows


def _budget(args):
    from .search import Budget

    return Budget(max_nodes=args.max_nodes, max_tokens=args.max_tokens, max_seconds=args.max_seconds)


def cmd_solve(args) -> int:
    from .models.loading import load_preset
    from .render.figures import standalone_html
    from .strategies import run_search

    params = parse_params(args.strategy, args.set or [])
    models = load_preset(args.preset, args.engine_url, args.prm_url)
    tree = run_search(args.question, args.strategy, models, params, seed=args.seed, budget=_budget(args),
                      gold=args.gold)
    sel, totals = tree.run["selection"], tree.run["totals"]
    print(f"answer: {sel['answer']}   ({sel['detail']})")
    if tree.run.get("gold") is not None:
        node = tree.node(sel["node_id"]) if sel["node_id"] is not None else None
        print(f"correct: {bool(node and node.correct)} (gold {tree.run['gold']})")
    if tree.run["stopped"]:
        print(f"stopped early: {tree.run['stopped']}")
    print(f"{totals['nodes']} nodes, {totals['policy_tokens']} policy tokens, {totals['scorer_tokens']} scored "
          f"tokens, {totals['seconds_total']:.1f} s")
    if sel["node_id"] is not None:
        print("\n" + "\n\n".join(tree.steps(sel["node_id"])))
    if args.json:
        tree.save(args.json)
        print(f"tree saved to {args.json}")
    if args.html:
        Path(args.html).write_text(standalone_html(tree), encoding="utf-8")
        print(f"figure saved to {args.html}")
    return 0


def cmd_eval(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from .models.loading import load_preset
    from .problems.tinygsm import load_test_set
    from .strategies import run_search
    from .strategies import STRATEGIES

    rows = parse_eval_rows(args.strategy)
    shared = args.set or []
    for pair in shared:  # a shared --set key must fit at least one strategy
        if not any(pair.partition("=")[0] in {f.name for f in dataclasses.fields(STRATEGIES[n].params)}
                   for n, _ in rows):
            raise SystemExit(f"--set {pair!r}: none of the chosen strategies takes {pair.partition('=')[0]!r}")
    plan = [(name, pairs, parse_params(name, pairs, base={"n": args.n}, shared=shared))
            for name, pairs in rows]  # every row's hyperparameters checked before the long run starts
    levels = [int(x) for x in args.levels.split(",")]
    problems = [p for p in load_test_set() if p.level in levels]
    if args.limit:
        problems = [p for lv in levels for p in [q for q in problems if q.level == lv][: args.limit]]
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    models = load_preset(args.preset, args.engine_url, args.prm_url)
    print(f"{len(problems)} held-out problems (levels {args.levels}), N={args.n}, seed {args.seed}, "
          f"preset {args.preset!r}" + (f", engine {args.engine_url}" if args.engine_url else "")
          + (f", PRM engine {args.prm_url}" if args.prm_url else "") + "\n")
    per_level = len(levels) > 1  # accuracy by difficulty too: where search helps, and where it cannot
    level_cells = "".join(f" level {lv} |" for lv in levels) if per_level else ""
    print(f"| strategy | accuracy % |{level_cells} policy tokens / problem | PRM tokens / problem | seconds / problem |")
    print("|---|---|" + "---|" * (len(levels) * per_level + 3), flush=True)
    for name, pairs, params in plan:
        title = STRATEGIES[name].title + (f" ({', '.join(pairs)})" if pairs else "")
        correct = {lv: [] for lv in levels}
        tokens = scored = 0
        seconds = 0.0

        def solve(i: int):  # each problem's seed is fixed by its place, so --workers never changes a result
            prob = problems[i]
            return prob, run_search(prob.question, name, models, params, seed=args.seed + i, budget=_budget(args),
                                    gold=str(prob.answer))

        with ThreadPoolExecutor(args.workers) as pool:
            done = tqdm(pool.map(solve, range(len(problems))), total=len(problems), desc=title, dynamic_ncols=True,
                        file=sys.stderr)
            results = list(done)
        for prob, tree in results:
            sel = tree.run["selection"]
            correct[prob.level].append(bool(sel["node_id"] is not None and tree.node(sel["node_id"]).correct))
            totals = tree.run["totals"]
            tokens += totals["policy_tokens"]
            scored += totals["scorer_tokens"]
            seconds += totals["seconds_total"]
        n = len(problems)
        right = sum(sum(c) for c in correct.values())
        by_level = "".join(f" {100 * sum(c) / max(1, len(c)):.1f} |" for c in correct.values()) if per_level else ""
        print(f"| {title} | {100 * right / n:.1f} |{by_level} {tokens / n:.0f} | {scored / n:.0f} | {seconds / n:.2f} |",
              flush=True)  # each row as it finishes: a long evaluation shows results as it goes
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_users, run_benchmarks

    if args.engine_url:
        bench_users(args.engine_url, args.users, args.searches)
    else:
        run_benchmarks(quick=args.quick)
    return 0


def _ints(raw: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"{what}: comma-separated whole numbers, e.g. 1,2,4") from None


def cmd_lab(args) -> int:
    import json

    from tqdm import tqdm

    from .lab import CellCache, LabSettings, run_lab, sft_records, sos_records
    from .models.loading import load_preset
    from .render.lab import lab_html, lab_markdown
    from .traces import jsonl

    settings = LabSettings(preset=args.preset, large_preset=None if args.large_preset == "none" else args.large_preset,
                           strategies=tuple(x.strip() for x in args.strategies.split(",") if x.strip()),
                           budgets=_ints(args.budgets, "--budgets"), levels=_ints(args.levels, "--levels"),
                           per_level=args.per_level, seed=args.seed)
    settings.validate(max_n=1024, max_problems=600)
    bar = tqdm(desc="lab searches", dynamic_ncols=True, file=sys.stderr)
    for summary, done, total in run_lab(settings, lambda name: load_preset(name, args.engine_url, args.prm_url),
                                        CellCache(args.cache) if args.cache else None):
        bar.total = total
        bar.n = done
        bar.refresh()
    bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lab.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(lab_markdown(summary))
    print(f"\ndata: {args.out / 'lab.json'}")
    if args.html:
        args.html.write_text(lab_html(summary), encoding="utf-8")
        print(f"figures: {args.html}")
    for path, records_of, what in ((args.sft, sft_records, "SFT data (verified paths)"),
                                   (args.sos, sos_records, "Stream-of-Search traces (searches)")):
        if path:
            records = records_of(settings, CellCache(args.cache) if args.cache else None)
            path.write_text(jsonl(records), encoding="utf-8")
            print(f"{what}: {path} ({len(records)} records)")
    return 0


def cmd_prm_flags(args) -> int:
    import shlex

    from .models.engine_prm import prm_engine_flags
    from .models.loading import load_tokenizer
    from .models.presets import BUNDLED_PRM

    model = args.model or str(BUNDLED_PRM)
    flags = prm_engine_flags(load_tokenizer(model), args.kind)
    print(shlex.join(["python", "-m", "vllm.entrypoints.openai.api_server", "--model", model, *flags]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .lab import DEFAULT_LARGE
    from .models.engine_prm import ENGINE_PRM_KINDS
    from .models.loading import DEFAULT_PRESET

    parser = argparse.ArgumentParser(prog="python -m reasoning_viz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    from .search import Budget  # its defaults are the CLI's (and the host's)

    def common(p):
        p.add_argument("--preset", default=DEFAULT_PRESET, help="model preset (default: the bundled student with the PRM)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a strategy hyperparameter")
        p.add_argument("--max-nodes", type=int, default=Budget.max_nodes)
        p.add_argument("--max-tokens", type=int, default=Budget.max_tokens)
        p.add_argument("--max-seconds", type=float, default=Budget.max_seconds)
        p.add_argument("--engine-url", metavar="URL",
                       help="generate the policy's steps through this inference engine, a vLLM server or "
                            "llama.cpp's llama-server (it must serve the preset's policy); the preset's scorer "
                            "still runs here")
        p.add_argument("--prm-url", metavar="URL",
                       help="score steps through this vLLM server's pooling API (it must serve the preset's "
                            "PRM with the flags of 'prm-flags')")

    solve = sub.add_parser("solve", help="answer one question and record the search")
    solve.add_argument("question")
    solve.add_argument("--strategy", default="beam_search")
    solve.add_argument("--gold", help="the correct answer, if known (marks nodes right/wrong)")
    solve.add_argument("--json", type=Path, help="write the tree record here")
    solve.add_argument("--html", type=Path, help="write a standalone, offline HTML figure here")
    common(solve)
    ev = sub.add_parser("eval", help="strategies over the held-out set")
    ev.add_argument("--strategy", default="all",
                    help="'all', or comma-separated names with optional variants, e.g. cot:greedy=false")
    ev.add_argument("--n", type=int, default=16, help="samples / beams per problem (N)")
    ev.add_argument("--levels", default="1,2,3,4,5,6")
    ev.add_argument("--limit", type=int, help="problems per level (default: all 100)")
    ev.add_argument("--workers", type=int, default=1,
                    help="problems searched at once (for an engine, which batches them; default 1)")
    common(ev)
    lab = sub.add_parser("lab", help="accuracy against compute over the held-out set (the app's Lab tab)")
    lab.add_argument("--strategies", default="best_of_n,self_consistency,weighted_vote,beam_search,dvts")
    lab.add_argument("--budgets", default="1,2,4,8,16,32,64", help="the N values (samples or beams)")
    lab.add_argument("--levels", default="1,2,3,4,5,6")
    lab.add_argument("--per-level", type=int, default=10, help="problems per level")
    lab.add_argument("--large-preset", default=DEFAULT_LARGE,
                     help="a second policy preset whose greedy answers are set against the search ('none': skip)")
    lab.add_argument("--out", type=Path, default=Path("lab-run"), help="folder for lab.json (assets/lab: the shipped run)")
    lab.add_argument("--html", type=Path, help="also write every figure to this offline HTML page")
    lab.add_argument("--sft", type=Path, help="also write the run's verified paths here, as chat-format SFT JSONL")
    lab.add_argument("--sos", type=Path, help="also write every search's Stream-of-Search trace here, as JSONL")
    lab.add_argument("--cache", type=Path, help="cell cache folder (default: RV_LAB_CACHE or ~/.cache/reasoning_viz/lab)")
    lab.add_argument("--preset", default=DEFAULT_PRESET)
    lab.add_argument("--seed", type=int, default=0)
    lab.add_argument("--engine-url", metavar="URL", help="as for eval")
    lab.add_argument("--prm-url", metavar="URL", help="as for eval")
    flags = sub.add_parser("prm-flags", help="the vLLM flags that serve a PRM for --prm-url")
    flags.add_argument("model", nargs="?", default=None, help="the PRM's folder or hub id (default: the bundled PRM)")
    flags.add_argument("--kind", choices=ENGINE_PRM_KINDS, default="math-shepherd",
                       help="its format: a Math-Shepherd-format causal LM, or Qwen2.5-Math-PRM")
    bench = sub.add_parser("bench", help="generator and PRM speed figures")
    bench.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    bench.add_argument("--engine-url", metavar="URL",
                       help="instead: many users at once, in-process against this vLLM server (serving the student)")
    bench.add_argument("--users", type=int, default=8)
    bench.add_argument("--searches", type=int, default=5, help="beam searches per user")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .models.engine import EngineError
    from .strategies import STRATEGIES

    if getattr(args, "strategy", None) and args.command == "solve" and args.strategy not in STRATEGIES:
        raise SystemExit(f"unknown strategy {args.strategy!r}; choose from {', '.join(STRATEGIES)}")
    try:
        return {"solve": cmd_solve, "eval": cmd_eval, "bench": cmd_bench, "lab": cmd_lab,
                "prm-flags": cmd_prm_flags}[args.command](args)
    except (ValueError, EngineError) as exc:  # bad input, an engine that is down: one clear line, not a trace
        raise SystemExit(f"error: {exc}") from None
