"""Tidy top-down tree layout: leaves side by side in depth-first order, each parent centred over
its children. Depth-first leaf order means edges never cross; it runs in linear time."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from ..tree import SearchTree


def tidy_layout(tree: SearchTree, children: Callable[[Hashable], list[Hashable]] | None = None
                ) -> dict[Hashable, tuple[float, float]]:
    """Node id -> (x, y) with y = -depth; leaves are one unit apart. ``children`` may replace the tree's
    own (the folded view puts one stub where a node's pruned children were); a stub ``("pruned", parent)``
    sits one level below its parent."""
    children = children or (lambda node_id: [c.id for c in tree.children(node_id)])
    pos: dict[Hashable, tuple[float, float]] = {}
    next_leaf = 0.0
    # iterative post-order, so deep chains cannot hit Python's recursion limit
    stack: list[tuple[Hashable, bool]] = [(0, False)]
    while stack:
        node_id, done = stack.pop()
        kids = children(node_id) if not isinstance(node_id, tuple) else []
        depth = tree.node(node_id).depth if not isinstance(node_id, tuple) else tree.node(node_id[1]).depth + 1
        if not kids:
            pos[node_id] = (next_leaf, -float(depth))
            next_leaf += 1.0
        elif done:
            pos[node_id] = ((pos[kids[0]][0] + pos[kids[-1]][0]) / 2, -float(depth))
        else:
            stack.append((node_id, True))
            stack.extend((k, False) for k in reversed(kids))
    return pos
