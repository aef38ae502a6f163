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


def _puct(parent_visits: int, child, c_puct: float) -> float:
    q = child.value if child.visits else (child.step_score or 0.0)
    return q + c_puct * (child.prior or 0.0) * math.sqrt(parent_visits) / (1 + (child.visits or 0))


def run(ctx: SearchContext, p: MCTSParams) -> None:
    tree, sampling = ctx.tree, p.sampling()
    value_sum = {0: 0.0}
    tree.update({0: {"visits": 0, "value": 0.0}}, "backed-up", "MCTS starts at the question")
    for sim in range(1, p.simulations + 1):
        ctx.check()  # a simulation that only re-visits finished paths never reaches expand's checks
        path = [tree.node(0)]
        while path[-1].status == "expanded":
            kids = [c for c in tree.children(path[-1].id) if c.status != "pruned"]
            if not kids:
                break
            path.append(max(kids, key=lambda c: (_puct(path[-1].visits or 0, c, p.c_puct), -c.id)))
        leaf = path[-1]
        updates: dict[int, dict] = {}
        if leaf.status == "open" and leaf.depth < p.max_depth:
            new = ctx.expand([leaf.id], p.width, sampling, what=f"MCTS simulation {sim}: expanded")[0]
            kids = [tree.node(i) for i in new]
            top = max(c.mean_logprob or 0.0 for c in kids)
            weights = [math.exp((c.mean_logprob or 0.0) - top) for c in kids]
            values = [c.step_score or 0.0 for c in kids]
            for c, w, v in zip(kids, weights, values):
                value_sum[c.id] = v
                updates[c.id] = {"prior": w / sum(weights), "visits": 1, "value": v}
        else:  # a finished path or the depth limit: re-evaluate the leaf itself
            values = [leaf.step_score or 0.0]
        for node in path:
            value_sum[node.id] = value_sum.get(node.id, 0.0) + sum(values)
            visits = (node.visits or 0) + len(values)
            updates[node.id] = {"visits": visits, "value": value_sum[node.id] / visits}
        tree.update(updates, "backed-up", f"MCTS simulation {sim}: backed up {sum(values) / len(values):.3f} "
                                          f"along {len(path)} nodes")
        ctx.notify()


def select(tree: SearchTree, p: MCTSParams) -> Selection:
    return most_visited(tree, p.aggregation)
