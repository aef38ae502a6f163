"""Tidy top-down tree layout: leaves side by side in depth-first order, each parent centred over
its children. Depth-first leaf order means edges never cross; it runs in linear time."""

from __future__ import annotations

from ..tree import SearchTree


def tidy_layout(tree: SearchTree) -> dict[int, tuple[float, float]]:
    """Node id -> (x, y) with y = -depth; leaves are one unit apart."""
    pos: dict[int, tuple[float, float]] = {}
    next_leaf = 0.0
    # iterative post-order, so deep chains cannot hit Python's recursion limit
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        node_id, done = stack.pop()
        kids = [c.id for c in tree.children(node_id)]
        depth = tree.node(node_id).depth
        if not kids:
            pos[node_id] = (next_leaf, -float(depth))
            next_leaf += 1.0
        elif done:
            pos[node_id] = ((pos[kids[0]][0] + pos[kids[-1]][0]) / 2, -float(depth))
        else:
            stack.append((node_id, True))
            stack.extend((k, False) for k in reversed(kids))
    return pos
