"""Diverse verifier tree search (Beeching et al. 2024, search-and-learn's ``dvts``).

The budget N is split into N/M independent subtrees. Each subtree keeps only its own best step at
every depth (greedy under the PRM) and tries M continuations of it, so one strong early step
cannot take over the whole search the way it can in beam search.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..search import SearchContext
from ..select import Selection, best_score
from ..tree import SearchTree
from .base import positive
from .beam_search import BeamSearchParams


@dataclass
class DVTSParams(BeamSearchParams):
    n: int = 16  # total candidates per depth, as in beam search
    beam_width: int = 4  # M: candidates per subtree per depth; N/M subtrees


def run(ctx: SearchContext, p: DVTSParams) -> None:
    positive("subtrees", p.n // p.beam_width)
    sampling = p.sampling()
    first = ctx.expand([0], p.n, sampling, what="DVTS: first steps")[0]
    groups = [first[i:i + p.beam_width] for i in range(0, len(first), p.beam_width)]
    for depth in range(1, p.max_depth + 1):
        frontier = []
        for g, group in enumerate(groups):
            if not group:
                continue
            ranked = sorted(group, key=lambda c: (-ctx.tree.path_score(c, p.aggregation), c))
            best, cut = ranked[0], ranked[1:]
            if cut:
                ctx.tree.prune({c: f"subtree {g + 1}: rank {r} of {len(group)}, DVTS keeps the best"
                                for r, c in enumerate(cut, start=2)},
                               f"DVTS subtree {g + 1} kept its best of {len(group)} steps at depth {depth}")
            if ctx.tree.node(best).status == "open":
                frontier.append((g, best))
        if not frontier or depth == p.max_depth:
            return
        children = ctx.expand([b for _, b in frontier], p.beam_width, sampling, what="DVTS: extended subtrees")
        groups = [[] for _ in groups]
        for (g, _), ids in zip(frontier, children):
            groups[g] = ids


def select(tree: SearchTree, p: DVTSParams) -> Selection:
    return best_score(tree, p.aggregation)
