"""Step-level beam search with a PRM (Snell et al. 2024; search-and-learn's ``beam_search``).

N candidates exist at every depth. The PRM ranks the open ones, the best N/M survive (the rest are
pruned, each with its rank), and each survivor gets M new children. Finished paths leave the beam;
the search ends when N paths have finished or at the depth limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, best_score
from ..tree import SearchTree
from .base import StrategyParams, positive


@dataclass
class BeamSearchParams(StrategyParams):
    n: int = 16  # beams (candidates per depth); search-and-learn sweeps 4..256
    beam_width: int = 4  # M: children per surviving beam; search-and-learn uses 4
    aggregation: str = "last"  # path score used to rank beams and pick the answer (search-and-learn: last)

    def validate(self) -> None:
        super().validate()
        positive("n", self.n)
        positive("beam_width", self.beam_width)
        if self.beam_width > self.n:
            raise ValueError(f"beam width ({self.beam_width}) cannot exceed N ({self.n})")
        if self.n % self.beam_width:
            raise ValueError(f"N ({self.n}) must be a multiple of the beam width ({self.beam_width})")


def beam_search(ctx: SearchContext, p: BeamSearchParams, stage: str | None = None) -> None:
    """Run beam search from the root (also the fast/slow pipeline's slow stage)."""
    keep = p.n // p.beam_width
    sampling = p.sampling()
    candidates = ctx.expand([0], p.n, sampling, stage=stage, what="Beam search: first steps")[0]
    finished = 0
    for depth in range(1, p.max_depth + 1):
        finished += sum(ctx.tree.node(c).status == "terminal" for c in candidates)
        active = [c for c in candidates if ctx.tree.node(c).status == "open"]
        if finished >= p.n or not active:
            return
        ranked = sorted(active, key=lambda c: (-ctx.tree.path_score(c, p.aggregation), c))
        survivors, cut = ranked[:keep], ranked[keep:]
        if cut:
            ctx.tree.prune({c: f"rank {r} of {len(active)}, beam keeps {keep}"
                            for r, c in enumerate(cut, start=keep + 1)},
                           f"Beam search kept {len(survivors)} of {len(active)} candidates at depth {depth}")
        if depth == p.max_depth:
            return
        candidates = [c for ids in ctx.expand(survivors, p.beam_width, sampling, stage=stage,
                                              what="Beam search: extended beams") for c in ids]


def run(ctx: SearchContext, p: BeamSearchParams) -> None:
    beam_search(ctx, p)


def select(tree: SearchTree, p: BeamSearchParams) -> Selection:
    return best_score(tree, p.aggregation)
