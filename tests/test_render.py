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


def test_equal_neighbouring_answers_are_labelled_once_with_their_count():
    from reasoning_viz.render.figures import answer_labels

    t = SearchTree("q", run={"strategy": "best_of_n"})
    ids = t.add_children(0, [dict(text=f"\\boxed{{{a}}}", status="terminal", answer=a) for a in "77787"], "five")
    labels = answer_labels(t, tidy_layout(t))
    assert sorted(labels.values()) == ["7", "7 ×3", "8"] and labels[ids[1]] == "7 ×3"


def test_replay_frames_keep_the_finished_trees_layout():
    from reasoning_viz.tree import replay

    t = small_tree()
    final = tidy_layout(t)
    early = replay(t.events, 1, run=t.run)
    fig = tree_figure(early, positions=final)
    nodes = next(d for d in fig.data if d.name == "nodes")
    assert [(x, y) for x, y in zip(nodes.x, nodes.y)] == [final[i] for i in nodes.customdata]
    assert tidy_layout(early) != {i: final[i] for i in tidy_layout(early)}, "without it, nodes would move"


def test_the_tree_has_a_legend_a_readable_title_and_a_colour_blind_safe_scale():
    from reasoning_viz.render.figures import COLORSCALE
    from reasoning_viz.select import best_score

    t = small_tree()
    t.run["strategy"] = "beam_search"
    t.select_path(best_score(t).node_id, "chosen")
    fig = tree_figure(t)
    assert fig.layout.title.text == "PRM beam search · 7 nodes"
    assert {d.name for d in fig.data if d.showlegend} >= {"question", "final answer", "pruned", "chosen path"}

    def luminance(hex_colour):  # WCAG relative luminance
        rgb = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    lum = [luminance(c) for _, c in COLORSCALE]
    # ordered by lightness alone, so colour-blind readers (and greyscale prints) read it the same way;
    # and every stop, the mid score too, stands out on white (contrast >= 2.5:1; red-yellow-green's was 1.1)
    assert lum == sorted(lum) and all(1.05 / (x + 0.05) >= 2.5 for x in lum)


def test_candidates_are_ranked_by_the_rule_with_ties_and_weak_steps_flagged():
    from reasoning_viz.render.text import candidate_table
    from reasoning_viz.select import majority_vote

    t = small_tree()
    t.run["selection"] = majority_vote(t).to_json()  # 14, 15, 20: one vote each, a three-way tie
    caption, rows = candidate_table(t)
    assert "votes for its answer" in caption and len(rows) == 3
    assert all("tie" in r[-1] for r in rows) and rows[0][-1].startswith("★ chosen")
    t.run["selection"] = {**majority_vote(t).to_json(), "rule": "best"}
    weak = [r for r in candidate_table(t)[1] if "weakest step" in r[-1]]
    assert [r[1] for r in weak] == ["20 ✗"]  # its first step scored 0.2, its last 0.95


def test_a_tie_is_marked_in_the_tree_itself():
    """A three-way tie of one vote each: the two answers that lost only by being found later are ringed
    in the tie colour (and named in the legend); a clear win marks nothing."""
    from reasoning_viz.render.figures import TIED
    from reasoning_viz.select import best_score, majority_vote

    t = small_tree()
    t.run["selection"] = majority_vote(t).to_json()
    t.select_path(t.run["selection"]["node_id"], "chosen")
    fig = tree_figure(t)
    nodes = next(tr for tr in fig.data if tr.name == "nodes")
    ringed = {i for i, c in zip(nodes.customdata, nodes.marker.line.color) if c == TIED}
    chosen = t.run["selection"]["node_id"]
    assert ringed == {n.id for n in t.terminals() if n.answer != t.node(chosen).answer}
    assert any("tied with the chosen answer" in (tr.name or "") for tr in fig.data)
    clear = small_tree()
    clear.run["selection"] = best_score(clear).to_json()  # 0.95 beats 0.8 and 0.3: no tie
    fig = tree_figure(clear)
    assert TIED not in next(tr for tr in fig.data if tr.name == "nodes").marker.line.color
    assert not any("tied" in (tr.name or "") for tr in fig.data)


def test_what_am_i_looking_at_tells_this_trees_numbers():
    from reasoning_viz.render.text import explain_markdown
    from reasoning_viz.select import best_score

    t = small_tree()
    t.run["selection"] = best_score(t).to_json()
    text = explain_markdown(t)
    assert "6 circles" in text and "this tree has 3" in text and "from 0.20 to 0.95" in text
    assert "1 step(s)" in text and "rank 2 of 2, beam keeps 1" in text and "**The answer** 20 comes from" in text


def test_folding_draws_each_nodes_pruned_children_as_one_stub():
    t = SearchTree("q", run={"strategy": "beam_search"})
    kept, *dropped = t.add_children(0, [dict(text=f"step {i}") for i in range(5)], "five")
    t.prune({n: f"rank {i + 2} of 5, beam keeps 1" for i, n in enumerate(dropped)}, "pruned four")
    fig = tree_figure(t, fold_pruned=True)
    folded = next(d for d in fig.data if d.name == "folded")
    assert folded.text == ("+4 pruned",) and "rank 2 of 5" in folded.hovertext[0]
    nodes = next(d for d in fig.data if d.name == "nodes")
    assert sorted(nodes.customdata) == [0, kept], "the pruned nodes themselves are not drawn"
    assert len(next(d for d in tree_figure(t).data if d.name == "nodes").customdata) == 6  # unfolded: all


def test_fast_slow_stages_have_their_own_colour_and_the_verdict_is_shown():
    from reasoning_viz.render.figures import FAST

    t = SearchTree("q", run={"strategy": "fast_slow"})
    t.add_children(0, [dict(text="fast", status="terminal", answer="3")], "fast", stage="fast")
    t.note("stage", "Verify: the fast path's min score 0.420 fails the threshold 0.7")
    t.add_children(0, [dict(text="slow")], "slow", stage="slow")
    fig = tree_figure(t)
    assert any(d.name == "fast edges" and d.line.color == FAST for d in fig.data)
    assert {d.name for d in fig.data if d.showlegend} >= {"fast stage", "slow stage (beam search)"}
    assert "fails the threshold 0.7" in fig.layout.annotations[0].text


def test_the_icicle_view_holds_every_node_under_its_parent():
    from reasoning_viz.render.figures import icicle_figure

    t = small_tree()
    ice = icicle_figure(t).data[0]
    assert list(ice.ids) == [str(n.id) for n in t.nodes()]
    assert list(ice.parents) == ["" if n.parent is None else str(n.parent) for n in t.nodes()]
