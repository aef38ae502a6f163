"""Fast/slow thinking at inference time, after Thinker (Chung et al. 2025): think fast, verify,
think slow only if needed, then summarise.

1. fast: one greedy chain under a small token budget;
2. verify: the PRM's aggregated score of the fast path against a threshold;
3. slow: beam search, only when verification fails;
4. summary: the shortest path whose score clears the threshold (else the best-scored one).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, shortest_confident
from ..tree import SearchTree
from .base import positive, sample_chains
from .beam_search import BeamSearchParams, beam_search


@dataclass
class FastSlowParams(BeamSearchParams):
    fast_max_tokens: int = 160  # the fast answer's token budget
    threshold: float = 0.7  # verification passes when the fast path's score is at least this
    aggregation: str = "min"  # a path is only as good as its weakest step

    def validate(self) -> None:
        super().validate()
        positive("fast_max_tokens", self.fast_max_tokens)
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")


def run(ctx: SearchContext, p: FastSlowParams) -> None:
    tree = ctx.tree
    tree.note("stage", f"Fast: one greedy answer within {p.fast_max_tokens} tokens")
    leaf = sample_chains(ctx, 1, p, temperature=0.0, stage="fast", max_tokens=p.fast_max_tokens)[0]
    node = tree.node(leaf)
    score = tree.path_score(leaf, p.aggregation)
    passed = node.status == "terminal" and node.answer is not None and score >= p.threshold
    verdict = "passes" if passed else "fails"
    tree.note("stage", f"Verify: the fast path's {p.aggregation} score {score:.3f} {verdict} the threshold "
                       f"{p.threshold:g}" + ("" if node.answer is not None else " (no answer reached)"))
    if passed:
        return
    tree.note("stage", f"Slow: beam search with N={p.n}, beam width {p.beam_width}")
    beam_search(ctx, p, stage="slow")


def select(tree: SearchTree, p: FastSlowParams) -> Selection:
    selection = shortest_confident(tree, p.aggregation, p.threshold)
    selection.detail = f"Summary: {selection.detail}"  # the fourth stage is the choice itself
    return selection
