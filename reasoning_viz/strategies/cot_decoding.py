"""CoT-decoding (Wang & Zhou 2024): branch on the top-k first tokens, continue each greedily, and
pick the path whose answer tokens the model was most sure of (mean p(top-1) - p(top-2))."""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, best_confidence
from ..tree import SearchTree
from .base import StrategyParams, open_leaves, positive


@dataclass
class CoTDecodingParams(StrategyParams):
    k: int = 10  # first-token branches; the paper uses k = 10

    def validate(self) -> None:
        super().validate()
        positive("k", self.k)


def run(ctx: SearchContext, p: CoTDecodingParams) -> None:
    greedy = p.sampling(temperature=0.0)
    first = ctx.top_first_tokens(0, p.k)
    leaves = ctx.expand([0], len(first), greedy, first_tokens=[first],
                        what=f"Branched on the top {len(first)} first tokens")[0]
    while True:
        growing = [i for i in open_leaves(ctx, leaves) if ctx.tree.node(i).depth < p.max_depth]
        if not growing:
            return
        step = dict(zip(growing, (c[0] for c in ctx.expand(growing, 1, greedy, what="Greedy continuation"))))
        leaves = [step.get(i, i) for i in leaves]


def select(tree: SearchTree, p: CoTDecodingParams) -> Selection:
    return best_confidence(tree)
