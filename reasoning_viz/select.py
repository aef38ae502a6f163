"""Answer selection: pure functions over a finished tree, so a recorded run can be re-judged.

Each rule returns a ``Selection``: the chosen answer, the terminal node whose path is shown as
chosen, the rule's evidence (vote counts or the best score) and one sentence saying how.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from .tree import AGGREGATIONS, Node, SearchTree


@dataclass
class Selection:
    rule: str
    answer: str | None
    node_id: int | None
    score: float | None = None
    votes: dict[str, float] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def answered(tree: SearchTree) -> list[Node]:
    """Terminal nodes that carry an extracted answer, in creation order."""
    return [n for n in tree.terminals() if n.answer is not None]


def _nothing(rule: str) -> Selection:
    return Selection(rule, None, None, detail="No finished path gave an answer, so nothing was chosen.")


def _pick_node(tree: SearchTree, nodes: list[Node], aggregation: str) -> Node:
    # the best-scored path with the winning answer; earliest node on ties (deterministic)
    return max(nodes, key=lambda n: (tree.path_score(n.id, aggregation), -n.id))


def _vote(tree: SearchTree, rule: str, aggregation: str, weighted: bool) -> Selection:
    nodes = answered(tree)
    if not nodes:
        return _nothing(rule)
    votes: dict[str, float] = defaultdict(float)
    for n in nodes:
        votes[n.answer] += tree.path_score(n.id, aggregation) if weighted else 1
    # ties go to the answer found first (deterministic)
    best = max(votes, key=lambda a: (votes[a], -min(n.id for n in nodes if n.answer == a)))
    node = _pick_node(tree, [n for n in nodes if n.answer == best], aggregation)
    detail = (f"Weighted vote ({aggregation} score): {best} with weight {votes[best]:.2f}" if weighted
              else f"Majority vote: {best} got {votes[best]:g} of {len(nodes)} votes")
    return Selection(rule, best, node.id, votes[best], dict(votes), detail)


def majority_vote(tree: SearchTree, aggregation: str = "last") -> Selection:
    """The most frequent final answer (self-consistency, Wang et al. 2023)."""
    return _vote(tree, "majority", aggregation, weighted=False)


def weighted_vote(tree: SearchTree, aggregation: str = "last") -> Selection:
    """Each answer's votes weighted by its paths' aggregated PRM scores, summed."""
    return _vote(tree, "weighted", aggregation, weighted=True)


def best_score(tree: SearchTree, aggregation: str = "last") -> Selection:
    """The answer of the single path with the highest aggregated score (best-of-N)."""
    nodes = answered(tree)
    if not nodes:
        return _nothing("best")
    node = _pick_node(tree, nodes, aggregation)
    score = tree.path_score(node.id, aggregation)
    return Selection("best", node.answer, node.id, score, {},
                     f"Best path by {aggregation} score: {node.answer} (score {score:.3f})")


def best_confidence(tree: SearchTree, aggregation: str = "last") -> Selection:
    """The answer whose tokens the model was most confident about (CoT-decoding, Wang & Zhou 2024)."""
    nodes = [n for n in answered(tree) if n.confidence is not None]
    if not nodes:
        return _nothing("confidence")
    node = max(nodes, key=lambda n: (n.confidence, -n.id))
    return Selection("confidence", node.answer, node.id, node.confidence,
                     {n.answer: round(n.confidence, 4) for n in nodes},
                     f"Most confident answer: {node.answer} (confidence {node.confidence:.3f})")


def most_visited(tree: SearchTree, aggregation: str = "last") -> Selection:
    """Follow the most-visited child from the root (MCTS); fall back to the best-scored answer."""
    current = tree.node(0)
    while True:
        kids = [c for c in tree.children(current.id) if c.visits]
        if not kids:
            break
        current = max(kids, key=lambda c: (c.visits, c.value or 0.0, -c.id))
    if current.status == "terminal" and current.answer is not None:
        return Selection("most-visited", current.answer, current.id, current.value, {},
                         f"Most-visited path ends in {current.answer} ({current.visits} visits)")
    fallback = best_score(tree, aggregation)
    fallback.detail = "Most-visited path has no answer yet; " + fallback.detail[0].lower() + fallback.detail[1:]
    return fallback


def shortest_confident(tree: SearchTree, aggregation: str = "min", threshold: float = 0.5) -> Selection:
    """The shortest path whose aggregated score clears ``threshold`` (the fast/slow summary)."""
    nodes = [n for n in answered(tree) if tree.path_score(n.id, aggregation) >= threshold]
    if not nodes:
        fallback = best_score(tree, aggregation)
        fallback.detail = f"No path scored >= {threshold:g}; " + fallback.detail[0].lower() + fallback.detail[1:]
        return fallback
    node = min(nodes, key=lambda n: (sum(p.num_tokens for p in tree.path(n.id)[1:]),
                                     -tree.path_score(n.id, aggregation), n.id))
    score = tree.path_score(node.id, aggregation)
    return Selection("shortest-confident", node.answer, node.id, score, {},
                     f"Shortest path scoring >= {threshold:g}: {node.answer} ({node.depth} steps, score {score:.3f})")


@dataclass
class Candidate:
    """One finished path as the selection rule saw it (for the ranked-candidates panel)."""

    node_id: int
    answer: str
    correct: bool | None
    score: float  # the path's aggregated score under the run's aggregation
    weakest: float | None  # its lowest and last step scores, to flag "last high, weakest low"
    last: float | None
    key: float  # what the rule ranks by: votes of its answer, score, confidence or visits
    chosen: bool = False
    tied: bool = False  # another answer ranks exactly as high


RANKED_BY = {"majority": "votes for its answer", "weighted": "summed score of its answer",
             "best": "path score", "shortest-confident": "path score", "confidence": "answer confidence",
             "most-visited": "MCTS visits"}


def run_aggregation(tree: SearchTree) -> str:
    """The aggregation the run ranked its paths by (its strategy's setting), ``last`` if it had none."""
    how = (tree.run.get("params") or {}).get("aggregation")
    return how if how in AGGREGATIONS else "last"


def tied_with_the_chosen(tree: SearchTree) -> set[int]:
    """Finished nodes of *another* answer that the run's rule ranked exactly as high as the chosen one
    (the rule then took the answer found first): what the tree marks as a tie."""
    ranked = rank_candidates(tree, tree.run.get("selection"), run_aggregation(tree))
    chosen = next((c.answer for c in ranked if c.chosen), None)
    return {c.node_id for c in ranked if c.tied and c.answer != chosen}


def rank_candidates(tree: SearchTree, selection: Selection | dict | None, aggregation: str = "last") -> list[Candidate]:
    """Every finished path, best first, ranked as the run's rule ranks them; the chosen path first among
    its answer's paths, and ``tied`` set where two different answers rank exactly alike."""
    sel = Selection(**selection) if isinstance(selection, dict) else selection
    if sel is None:
        return []
    out = []
    for n in answered(tree):
        steps = [p.step_score for p in tree.path(n.id)[1:] if p.step_score is not None]
        score = tree.path_score(n.id, aggregation)
        key = {"majority": sel.votes.get(n.answer, 0.0), "weighted": sel.votes.get(n.answer, 0.0),
               "confidence": n.confidence if n.confidence is not None else float("-inf"),
               "most-visited": float(n.visits or 0)}.get(sel.rule, score)
        out.append(Candidate(n.id, n.answer, n.correct, score, min(steps) if steps else None,
                             steps[-1] if steps else None, key, chosen=n.id == sel.node_id))
    out.sort(key=lambda c: (-c.key, not c.chosen, -c.score, c.node_id))  # the chosen path leads its rank
    tops: dict[float, set[str]] = defaultdict(set)
    for c in out:
        tops[c.key].add(c.answer)
    for c in out:
        c.tied = len(tops[c.key]) > 1 and c.key == out[0].key
    return out


RULES = {"majority": majority_vote, "weighted": weighted_vote, "best": best_score,
         "confidence": best_confidence, "most-visited": most_visited}
RULE_TITLES = {"majority": "majority vote", "weighted": "PRM-weighted vote", "best": "best path score",
               "confidence": "answer confidence", "most-visited": "most visits"}


def select(tree: SearchTree, rule: str, aggregation: str = "last") -> Selection:
    """Apply the named rule; ``aggregation`` is one of last/min/prod/mean."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {sorted(RULES)}")
    return RULES[rule](tree, aggregation)


def rejudge(tree: SearchTree, rule: str, aggregation: str = "last") -> SearchTree:
    """A copy of a finished (or loaded) tree whose answer is chosen again by ``rule``, with no model call:
    the selection, the highlighted path and one "selected" event are new; the run's own choice is kept
    in ``run["rejudged"]["original"]``. The same selection a fresh run with that rule would make."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
    copy = SearchTree.from_json(tree.to_json(), trusted=True)
    selection = select(copy, rule, aggregation)
    earlier = copy.run.get("rejudged") or {}
    copy.run["rejudged"] = {"rule": rule, "aggregation": aggregation,
                            "original": earlier.get("original", copy.run.get("selection"))}
    copy.run["selection"] = selection.to_json()
    copy.select_path(selection.node_id, f"Re-judged by {RULE_TITLES[rule]} ({aggregation}): {selection.detail}")
    return copy
