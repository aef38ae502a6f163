"""Monte-Carlo tree search over reasoning steps with PUCT (Silver et al. 2017; for LLM reasoning
e.g. Zhang et al. 2024, ReST-MCTS*).

Each simulation walks down by PUCT, Q(c) + c_puct * P(c) * sqrt(N(parent)) / (1 + N(c)), expands
the leaf with ``width`` sampled steps, values each new step by its PRM score and backs the mean
value up the path. The prior P is a softmax over siblings' mean token log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, most_visited
from ..tree import SearchTree
from .base import StrategyParams, positive


@dataclass
class MCTSParams(StrategyParams):
    simulations: int = 24  # search iterations
    width: int = 3  # children per expansion
    c_puct: float = 1.25  # exploration weight (AlphaZero's c_init)
    aggregation: str = "last"  # for the fallback choice when no visited path finished

    def validate(self) -> None:
        super().validate()
        positive("simulations", self.simulations)
        positive("width", self.width)
        if self.c_puct < 0:
            raise ValueError(f"c_puct must be >= 0, got {self.c_puct}")


def run(ctx: SearchContext, p: MCTSParams) -> None:
    """Simulations of four phases each: select a leaf, expand it, evaluate the new steps, back up."""
    tree, sampling = ctx.tree, p.sampling()
    value_sum = {0: 0.0}  # per node, the sum of the values backed up through it
    tree.update({0: {"visits": 0, "value": 0.0}}, "backed-up", "MCTS starts at the question")
    for sim in range(1, p.simulations + 1):
        ctx.check()  # a simulation that only re-visits finished paths never reaches expand's checks
        path = select_leaf(tree, p.c_puct)
        leaf, updates = path[-1], {}
        if leaf.status == "open" and leaf.depth < p.max_depth:
            kids, priors = expand(ctx, leaf, p.width, sampling, sim)
            values = evaluate(kids)
            for c, prior, v in zip(kids, priors, values):
                value_sum[c.id] = v
                updates[c.id] = {"prior": prior, "visits": 1, "value": v}
        else:  # a finished path or the depth limit: re-evaluate the leaf itself
            values = evaluate([leaf])
        updates.update(back_up(path, values, value_sum))
        tree.update(updates, "backed-up", f"MCTS simulation {sim}: backed up {sum(values) / len(values):.3f} "
                                          f"along {len(path)} nodes")
        ctx.notify()


def select_leaf(tree: SearchTree, c_puct: float) -> list:
    """Select: from the root, follow the child of highest PUCT until a node not yet expanded."""
    path = [tree.node(0)]
    while path[-1].status == "expanded":
        kids = [c for c in tree.children(path[-1].id) if c.status != "pruned"]
        if not kids:
            break
        path.append(max(kids, key=lambda c: (_puct(path[-1].visits or 0, c, c_puct), -c.id)))
    return path


def _puct(parent_visits: int, child, c_puct: float) -> float:
    q = child.value if child.visits else (child.step_score or 0.0)
    return q + c_puct * (child.prior or 0.0) * math.sqrt(parent_visits) / (1 + (child.visits or 0))


def expand(ctx: SearchContext, leaf, width: int, sampling, sim: int) -> tuple[list, list[float]]:
    """Expand: ``width`` sampled steps under the leaf (scored as they are made), and their priors, a
    softmax over their mean token log-probabilities."""
    new = ctx.expand([leaf.id], width, sampling, what=f"MCTS simulation {sim}: expanded")[0]
    kids = [ctx.tree.node(i) for i in new]
    top = max(c.mean_logprob or 0.0 for c in kids)
    weights = [math.exp((c.mean_logprob or 0.0) - top) for c in kids]
    return kids, [w / sum(weights) for w in weights]


def evaluate(nodes: list) -> list[float]:
    """Evaluate: a step's value is its PRM score (no rollout to the end)."""
    return [n.step_score or 0.0 for n in nodes]


def back_up(path: list, values: list[float], value_sum: dict[int, float]) -> dict[int, dict]:
    """Back up: every node on the path gains the new values' visits, and its value is their mean."""
    updates = {}
    for node in path:
        value_sum[node.id] = value_sum.get(node.id, 0.0) + sum(values)
        visits = (node.visits or 0) + len(values)
        updates[node.id] = {"visits": visits, "value": value_sum[node.id] / visits}
    return updates


def select(tree: SearchTree, p: MCTSParams) -> Selection:
    return most_visited(tree, p.aggregation)
