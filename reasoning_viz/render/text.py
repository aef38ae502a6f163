"""Words for people: the inspector's path view, event sentences, tables and progress lines."""

from __future__ import annotations

import re

from ..select import RANKED_BY, RULE_TITLES, rank_candidates, run_aggregation
from ..tree import Node, SearchTree

_EQUATION = re.compile(r"(?<![\w$\\])(-?\d+(?:\.\d+)?(?:\s*[-+*/×÷]\s*-?\d+(?:\.\d+)?)+\s*=\s*-?\d+(?:\.\d+)?)")
_BOXED = re.compile(r"(\\boxed\{[^{}$]*\})")
# LaTeX a model wrote itself: KaTeX renders it as math (never as links or images), so it stays as is
_WRITTEN_MATH = re.compile(r"(\$\$.+?\$\$|\$[^$\n]+?\$|\\\(.+?\\\)|\\\[.+?\\\])", re.S)
# what Markdown or HTML could turn into something else; ':', '@' and "www." so nothing becomes an autolink
_MARKDOWN = re.compile(r"([\\`*_\[\]()#!|<>~&$:@])|(?<=www)(\.)", re.I)


def plain(text: object) -> str:
    """Text from a tree (a model's step, an uploaded file) for a Markdown panel: every Markdown and HTML
    character written as an HTML entity, so it shows as the character it is and never becomes a link,
    an image or a tag (entities, not backslashes: ``\\(`` and ``\\[`` open math in the app's panels)."""
    return _MARKDOWN.sub(lambda m: f"&#{ord(m[0])};", str(text))


def math_markdown(text: str) -> str:
    """Step text for a Markdown panel: plain text (``plain``), except the math in it, which KaTeX
    renders: LaTeX the model wrote, else bare equations and ``\\boxed{}`` wrapped in ``$...$``."""
    parts = _WRITTEN_MATH.split(text)
    if len(parts) > 1:  # odd items are the model's own math
        return "".join(p if i % 2 else plain(p) for i, p in enumerate(parts))
    out, last = [], 0
    spans = [(m.start(1), m.end(1), "$" + m[1].replace("*", r"\times").replace("/", r"\div") + "$")
             for m in _EQUATION.finditer(text)]
    spans += [(m.start(1), m.end(1), "$" + m[1] + "$") for m in _BOXED.finditer(text)
              if not any(a <= m.start(1) < b for a, b, _ in spans)]
    for start, end, math in sorted(spans):
        out += [plain(text[last:start]), math]
        last = end
    out.append(plain(text[last:]))
    return "".join(out)


def _score(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _mark(n: Node) -> str:
    return "" if n.correct is None else (" ✓" if n.correct else " ✗")


def path_markdown(tree: SearchTree, node_id: int) -> str:
    """The inspector: the question, then each step on the path to ``node_id`` with its scores."""
    path = tree.path(node_id)
    out = [f"**Question.** {math_markdown(tree.question)}", ""]
    for n in path[1:]:
        flags = [f"step score **{_score(n.step_score)}**"]
        if n.path_score:
            flags.append("path " + " · ".join(f"{k} {v:.3f}" for k, v in n.path_score.items()))
        flags.append(f"{n.num_tokens} tokens")
        if n.visits:
            flags.append(f"MCTS visits {n.visits}, value {_score(n.value)}, prior {_score(n.prior)}")
        if n.confidence is not None:
            flags.append(f"answer confidence {n.confidence:.3f}")
        status = n.status + (f" — {plain(n.reason)}" if n.reason else "") + (f" · stage {plain(n.stage)}" if n.stage else "")
        out.append(f"**Step {n.depth}** (node {n.id}, {status})  \n{math_markdown(n.text)}  \n"
                   f"<small>{' · '.join(flags)}</small>")
        out.append("")
    last = path[-1]
    if last.answer is not None:
        out.append(f"**Answer:** {plain(last.answer)}{_mark(last)}")
    elif last.id == 0:
        out.append("_This is the question (the root). Click a step to see its path._")
    return "\n".join(out)


NODE_COLUMNS = ["node", "parent", "depth", "status", "step score", "path min", "visits", "answer", "step"]


def node_rows(tree: SearchTree) -> list[list]:
    """One row per node for the node table (keyboard- and API-friendly node picking)."""
    rows = []
    for n in tree.nodes():
        rows.append([n.id, "" if n.parent is None else n.parent, n.depth, n.status,
                     "" if n.step_score is None else round(n.step_score, 3),
                     "" if not n.path_score else round(n.path_score["min"], 3),
                     n.visits or "", (n.answer or "") + _mark(n), n.text[:120]])
    return rows


def progress_line(tree: SearchTree, totals: dict | None = None, done: bool = False) -> str:
    """Nodes, tokens, seconds and how much of the budget is used."""
    run = tree.run
    budget = run.get("budget", {})
    totals = totals or run.get("totals") or {}
    nodes = len(tree)
    tokens = totals.get("policy_tokens", sum(n.num_tokens for n in tree.nodes()))
    seconds = totals.get("seconds_total", 0.0)
    parts = [f"**{nodes}** nodes", f"**{tokens}** tokens", f"**{seconds:.1f}** s"]
    if budget:
        used = max(nodes / budget["max_nodes"], tokens / budget["max_tokens"], seconds / budget["max_seconds"])
        parts.append(f"budget used {min(1.0, used):.0%}")
    state = "done" if done else "searching…"
    if run.get("stopped"):
        state = f"stopped: {plain(run['stopped'])}"
    return " · ".join(parts) + f" — {state}"


def answer_markdown(tree: SearchTree) -> str:
    """The final answer, how it was chosen, whether it is right, and the run's totals."""
    sel = tree.run.get("selection")
    if not sel:
        return "_No answer yet._"
    lines = []
    if sel["answer"] is None:
        lines.append(f"### No answer\n{plain(sel['detail'])}")
    else:
        node = tree.node(sel["node_id"]) if sel["node_id"] is not None else None
        verdict = ""
        if node is not None and node.correct is not None:
            verdict = " ✓ correct" if node.correct else f" ✗ wrong (gold {plain(tree.run.get('gold'))})"
        lines.append(f"### Answer: {plain(sel['answer'])}{verdict}\n{plain(sel['detail'])}")
        if node is not None:
            lines.extend(weak_step_warning(tree, node.id))
    rejudged = tree.run.get("rejudged")
    if isinstance(rejudged, dict) and isinstance(rejudged.get("original"), dict):
        own = rejudged["original"].get("answer")
        rule = RULE_TITLES.get(rejudged.get("rule"), rejudged.get("rule")) if isinstance(rejudged.get("rule"), str) \
            else "?"
        lines.append(f"↺ Re-judged with no model call by {plain(rule)} (path score: "
                     f"{plain(rejudged.get('aggregation'))}). The run's own rule chose "
                     f"{plain(own) if own is not None else 'no answer'}.")
    lines.extend(f"⚠️ {plain(w)}" for w in tree.run.get("warnings") or [])
    t = tree.run.get("totals")
    if t:
        lines.append(f"{t['nodes']} nodes · {t['policy_tokens']} policy tokens · {t['scorer_tokens']} PRM tokens · "
                     f"{t['seconds_total']:.1f} s (generating {t['seconds_generating']:.1f} s, scoring "
                     f"{t['seconds_scoring']:.1f} s, other {t['seconds_other']:.1f} s)")
    for key, verb in (("engine", "Generated"), ("scorer_engine", "Scored")):
        engine = tree.run.get(key)
        if engine:
            lines.append(f"{verb} by {plain(engine.get('engine'))} {plain(engine.get('version') or '')} at "
                         f"{plain(engine.get('url'))} (model {plain(engine.get('model'))}).")
    if tree.run.get("stopped"):
        lines.append(f"⚠️ The search stopped early: {plain(tree.run['stopped'])}.")
    return "\n\n".join(lines)


WEAK_STEP_GAP = 0.5  # a step this far below the last step's score is worth a warning


def weak_step_warning(tree: SearchTree, node_id: int) -> list[str]:
    """A warning, as a one-item list, when the chosen path's weakest step scored far below its last
    step: a ``last``-score ranking then vouches for a path that a step of it does not support."""
    steps = [n for n in tree.path(node_id)[1:] if n.step_score is not None]
    if len(steps) < 2:
        return []
    weakest = min(range(len(steps)), key=lambda i: steps[i].step_score)
    low, last = steps[weakest].step_score, steps[-1].step_score
    if last - low < WEAK_STEP_GAP:
        return []
    return [f"⚠️ The weakest step of this path (step {weakest + 1}, score {low:.2f}) is far below its last "
            f"step ({last:.2f}): the verifier doubted a step this answer rests on."]


def event_markdown(tree: SearchTree, index: int) -> str:
    """One event of the log, in words, with its position."""
    e = tree.events[index]
    return f"**Event {index} of {len(tree.events) - 1}** ({plain(e.kind)}): {plain(e.message)}"


CANDIDATE_COLUMNS = ["rank", "answer", "ranked by", "path score", "weakest step", "node", "note"]


def candidate_table(tree: SearchTree, limit: int = 30) -> tuple[str, list[list]]:
    """A caption and the rows of the ranked-candidates panel: every finished path as the run's rule
    ranked it, the chosen one marked, ties and "last step high, weakest step low" flagged."""
    sel = tree.run.get("selection")
    aggregation = run_aggregation(tree)
    ranked = rank_candidates(tree, sel, aggregation)
    if not ranked:
        return "No finished path gave an answer yet.", []
    rule = sel["rule"]
    caption = (f"{len(ranked)} finished path(s), ranked by **{RANKED_BY.get(rule, rule)}** (path score: "
               f"{aggregation} step). The chosen one is marked ★.")
    rows = []
    for rank, c in enumerate(ranked[:limit], 1):
        notes = []
        if c.chosen:
            notes.append("★ chosen")
        if c.tied:
            notes.append("tie")
        if c.weakest is not None and c.last is not None and c.last - c.weakest >= WEAK_STEP_GAP:
            notes.append(f"weakest step {c.weakest:.2f} ≪ last {c.last:.2f}")
        mark = "" if c.correct is None else (" ✓" if c.correct else " ✗")
        key = f"{c.key:g}" if rule in ("majority", "most-visited") else f"{c.key:.3f}"
        rows.append([rank, c.answer + mark, key, round(c.score, 3), "" if c.weakest is None else round(c.weakest, 3),
                     c.node_id, ", ".join(notes)])
    return caption, rows


def explain_markdown(tree: SearchTree) -> str:
    """"What am I looking at?": what a step, a PRM score, pruning and the choice are, in plain words,
    told with the numbers of this tree."""
    steps = [n for n in tree.nodes()[1:]]
    scored = [n.step_score for n in steps if n.step_score is not None]
    pruned = [n for n in steps if n.status == "pruned"]
    finished = [n for n in steps if n.status == "terminal" and n.answer is not None]
    out = [f"**The tree.** The square at the top is the question. Each of the {len(steps)} circles below it is "
           "one *step* the model wrote (hover to read it, click to see its whole path). A line from the square "
           f"down to a diamond is one complete solution; this tree has {len(finished)}, and the diamond shows its "
           "final answer (✓ or ✗ when a gold answer is given)."]
    if scored:
        out.append(f"**The colours** are the process reward model's score for each step: how likely the "
                   f"verifier thinks the solution still is to be right after that step (dark violet near 0, "
                   f"orange near 1). Here they run from {min(scored):.2f} to {max(scored):.2f}. A low step "
                   "inside a path is where the verifier doubts it. A Math-Shepherd PRM (the bundled one too) learnt a "
                   "step's score as how often the student goes on to the right answer from there, so even a right "
                   "step of a hard problem scores modestly: compare a step with its siblings, not with 1.")
    if pruned:
        example = next((n.reason for n in pruned if n.reason), None)
        out.append(f"**Pruned** (faded crosses): {len(pruned)} step(s) the strategy chose not to continue"
                   + (f", e.g. “{plain(example)}”." if example else "."))
    if any(n.visits for n in steps):
        out.append("**Bigger circles** were visited more often by the tree search (MCTS): it came back to "
                   "them because their steps scored well or were unexplored.")
    sel = tree.run.get("selection") or {}
    if sel.get("answer") is not None:
        rule = {"majority": "is the answer most paths reached", "weighted": "is the answer whose paths scored "
                "highest in total", "best": "comes from the single path the PRM scored highest",
                "confidence": "is the answer the model was most confident of", "most-visited": "comes from the "
                "path the tree search visited most", "shortest-confident": "comes from the shortest path the PRM "
                "trusted"}.get(sel.get("rule"), "was chosen by the strategy's rule")
        out.append(f"**The answer** {plain(sel['answer'])} {rule}; its path is drawn thick and blue. "
                   "The table below the tree ranks every finished path the same way.")
    return "\n\n".join(out)
