"""The renderer: tidy layout without crossings, and what the figure encodes."""

from test_tree import small_tree

from reasoning_viz.render.figures import WEBGL_ABOVE, tree_figure
from reasoning_viz.render.layout import tidy_layout
from reasoning_viz.render.text import math_markdown, path_markdown
from reasoning_viz.tree import SearchTree


def wide_tree(n_children: int) -> SearchTree:
    t = SearchTree("q")
    kids = t.add_children(0, [dict(text=f"s{i}") for i in range(n_children)], "wide")
    t.add_children(kids[0], [dict(text="a"), dict(text="b"), dict(text="c")], "deeper")
    return t


def test_layout_centres_parents_and_never_crosses():
    t = wide_tree(4)
    pos = tidy_layout(t)
    for n in t.nodes():
        assert pos[n.id][1] == -n.depth
        kids = t.children(n.id)
        if kids:
            xs = [pos[k.id][0] for k in kids]
            assert xs == sorted(xs)  # siblings left to right in order
            assert pos[n.id][0] == (xs[0] + xs[-1]) / 2  # parent centred over its children
    # subtrees occupy disjoint x ranges, so edges cannot cross
    leaves_under_first = [pos[k.id][0] for k in t.children(1)]
    assert max(leaves_under_first) < min(pos[i][0] for i in (2, 3, 4))


def test_figure_encodes_scores_pruning_and_the_chosen_path():
    t = small_tree()
    t.select_path(3, "chosen")
    fig = tree_figure(t)
    nodes = next(tr for tr in fig.data if tr.name == "nodes")
    ids = list(nodes.customdata)
    pruned = ids.index(6)
    assert nodes.marker.opacity[pruned] < 1 and nodes.marker.symbol[pruned] == "x"
    assert nodes.marker.symbol[ids.index(3)] == "diamond" and "14✓" in nodes.text[ids.index(3)]
    assert nodes.marker.color[ids.index(1)] == 0.9  # colour is the step score
    selected = next(tr for tr in fig.data if tr.name == "selected edges")
    assert len([x for x in selected.x if x is not None]) == 2 * 2  # root->1->3: two edges
    assert fig.layout.uirevision == t.run["question"]  # zoom and pan survive live updates
    assert nodes.type == "scatter"
    big = tree_figure(wide_tree(WEBGL_ABOVE + 1))
    assert next(tr for tr in big.data if tr.name == "nodes").type == "scattergl"


def test_inspector_text_renders_maths_and_the_whole_path():
    t = small_tree()
    text = path_markdown(t, 3)
    assert "Step 1" in text and "Step 2" in text and "**Answer:** 14 ✓" in text
    assert math_markdown("3 * 4 = 12") == r"$3 \times 4 = 12$"
    assert math_markdown("The answer is \\boxed{7}.") == "The answer is $\\boxed{7}$."
