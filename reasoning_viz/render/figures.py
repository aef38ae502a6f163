"""Plotly figures of a search tree and of the answer vote. Pure drawing: no model is ever called.

Node colour is the step score (dark violet = doubtful, orange = confident; a colour-blind-safe scale),
node size grows with MCTS visits, pruned nodes are faded crosses, finished paths end in a diamond
labelled with the answer and ✓/✗ when a gold answer is known, the chosen answer's path is drawn
thick, and for a vote the paths that voted for the winner are drawn in light blue. A legend says so. ``uirevision``
keeps the user's zoom and pan while a live search redraws the figure.
"""

from __future__ import annotations

import html
import math
import textwrap

import plotly.graph_objects as go

from ..select import Selection, tied_with_the_chosen
from ..strategies import STRATEGIES
from ..tree import SearchTree
from .layout import tidy_layout

WEBGL_ABOVE = 500  # nodes; beyond this, WebGL traces keep pan and zoom smooth
# Plasma without its pale yellow end: ordered by lightness (readable for colour-blind people and in
# greyscale), and every score, 0.5 too, stands out on white and on a projector (contrast >= 2.8:1).
# Low = dark violet, high = coral orange.
COLORSCALE = [[i / 6, c] for i, c in enumerate(["#0d0887", "#46039f", "#7201a8", "#9c179e", "#bd3786", "#d8576b",
                                                 "#ed7953"])]
UNSCORED = "#9aa0a6"
SELECTED = "#1f4fd1"
VOTED = "#7fa3f5"  # the paths that voted for the chosen answer
FAST = "#009e73"  # fast/slow: the fast stage's path (Okabe-Ito bluish green)
TIED = "#e69f00"  # an answer that ranked exactly as high as the chosen one (Okabe-Ito orange)
SYMBOLS = {"question": "square", "step": "circle", "answer": "diamond", "pruned": "x"}
VOTE_RULES = ("majority", "weighted")


def _wrap(text: str, width: int = 70, max_lines: int = 12) -> str:
    lines = []
    for para in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(para, width) or [""])
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["…"]
    return "<br>".join(html.escape(line) for line in lines)


def _hover(tree: SearchTree, n) -> str:
    parts = [f"<b>node {n.id}</b> · depth {n.depth} · {n.status}" + (f" ({html.escape(n.stage)})" if n.stage else "")]
    parts.append(_wrap(n.text if n.id else "Question: " + n.text))
    if n.step_score is not None:
        parts.append(f"step score {n.step_score:.3f}")
    if n.path_score:
        parts.append("path " + ", ".join(f"{k} {v:.3f}" for k, v in n.path_score.items()))
    if n.visits:
        parts.append(f"visits {n.visits} · value {n.value or 0:.3f} · prior {n.prior or 0:.3f}")
    if n.num_tokens:
        parts.append(f"{n.num_tokens} tokens")
    if n.answer is not None:
        mark = "" if n.correct is None else (" ✓" if n.correct else " ✗")
        parts.append(f"answer <b>{html.escape(n.answer)}</b>{mark}")
    if n.reason:
        parts.append(f"pruned: {html.escape(n.reason)}")
    return "<br>".join(parts)


def answer_labels(tree: SearchTree, pos: dict[int, tuple[float, float]]) -> dict[int, str]:
    """Node id -> label for finished answers. Neighbouring answers at one depth that are the same are
    labelled once, at the middle of the run, with their count ("42✓ ×5"): a wide tree's labels stay
    readable (the page also hides any label that would still overlap another, see app.py)."""
    finished = [n for n in tree.nodes() if n.status == "terminal" and n.answer is not None]
    rows: dict[float, list] = {}
    for n in sorted(finished, key=lambda n: pos[n.id][0]):
        rows.setdefault(pos[n.id][1], []).append(n)
    labels: dict[int, str] = {}
    for row in rows.values():
        runs: list[list] = []
        for n in row:
            text = f"{n.answer}{'' if n.correct is None else ('✓' if n.correct else '✗')}"
            if runs and runs[-1][0] == text:
                runs[-1][1].append(n)
            else:
                runs.append([text, [n]])
        for text, members in runs:
            middle = members[len(members) // 2]
            labels[middle.id] = html.escape(text) + (f" ×{len(members)}" if len(members) > 1 else "")
    return labels


def _voters(tree: SearchTree) -> set[int]:
    """The finished paths that voted for the chosen answer (vote rules only)."""
    sel = tree.run.get("selection") or {}
    if sel.get("rule") not in VOTE_RULES or sel.get("answer") is None:
        return set()
    return {n.id for n in tree.nodes() if n.status == "terminal" and n.answer == sel["answer"]}


def tree_figure(tree: SearchTree, title: str | None = None, height: int = 560, highlight: int | None = None,
                positions: dict[int, tuple[float, float]] | None = None, fold_pruned: bool = False) -> go.Figure:
    """The whole tree, kept and pruned branches, with per-step scores; ``highlight`` rings a node.

    ``positions`` (from ``tidy_layout`` of the finished tree) keeps every node where it will end up, so
    replay frames do not jump as the tree grows. ``fold_pruned`` draws each node's pruned children as one
    "+12 pruned" stub (hover it for their reasons), so a wide search shows the branches it kept."""
    stubs: dict[int, list] = {}
    if fold_pruned:
        hidden = {d for n in tree.nodes() if n.status == "pruned" for d in _subtree(tree, n.id)}
        for n in tree.nodes():
            if n.status == "pruned" and n.parent is not None and n.parent not in hidden:
                stubs.setdefault(n.parent, []).append(n)

        def kids(node_id):
            return [c.id for c in tree.children(node_id) if c.id not in hidden] + (
                [("pruned", node_id)] if node_id in stubs else [])
        pos = tidy_layout(tree, kids)
        nodes = [n for n in tree.nodes() if n.id not in hidden]
    else:
        pos = positions if positions is not None else tidy_layout(tree)
        nodes = tree.nodes()
    big = len(nodes) > WEBGL_ABOVE
    Scatter = go.Scattergl if big else go.Scatter
    fig = go.Figure()
    voters = _voters(tree)
    voter_paths = {a.id for v in voters for a in tree.path(v)}
    edge_groups = {"kept": ([], [], dict(color="#b0b4ba", width=1.2)),
                   "pruned": ([], [], dict(color="#d9dce0", width=1, dash="dot")),
                   "fast": ([], [], dict(color=FAST, width=2.5)),
                   "voted": ([], [], dict(color=VOTED, width=2.5)),
                   "selected": ([], [], dict(color=SELECTED, width=4))}
    for n in nodes:
        if n.parent is None:
            continue
        group = ("selected" if n.selected else "voted" if n.id in voter_paths else "fast" if n.stage == "fast"
                 else "pruned" if n.status == "pruned" else "kept")
        xs, ys, _ = edge_groups[group]
        (x0, y0), (x1, y1) = pos[n.parent], pos[n.id]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for parent in stubs:
        xs, ys, _ = edge_groups["pruned"]
        (x0, y0), (x1, y1) = pos[parent], pos["pruned", parent]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for name, (xs, ys, line) in edge_groups.items():
        if xs:
            fig.add_trace(Scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip", showlegend=False,
                                  name=f"{name} edges"))
    labels = answer_labels(tree, pos)
    tied = tied_with_the_chosen(tree)
    colors, sizes, symbols, opac, lines = [], [], [], [], []
    for n in nodes:
        colors.append(n.step_score if n.step_score is not None else math.nan)
        sizes.append(22 if n.id == 0 else 11 + 3 * math.sqrt(n.visits or 0))
        symbols.append(SYMBOLS["question" if n.id == 0 else "pruned" if n.status == "pruned"
                               else "answer" if n.status == "terminal" else "step"])
        opac.append(0.35 if n.status == "pruned" else 1.0)
        lines.append("#000000" if n.id == highlight else SELECTED if n.selected or n.id in voters
                     else TIED if n.id in tied else "#ffffff")
    fig.add_trace(Scatter(
        x=[pos[n.id][0] for n in nodes], y=[pos[n.id][1] for n in nodes], mode="markers+text",
        text=[labels.get(n.id, "") for n in nodes], textposition="bottom center", textfont=dict(size=11),
        customdata=[n.id for n in nodes], hovertext=[_hover(tree, n) for n in nodes], hoverinfo="text",
        marker=dict(color=colors, cmin=0, cmax=1, colorscale=COLORSCALE, size=sizes, symbol=symbols,
                    opacity=opac, line=dict(color=lines, width=[1 if c == "#ffffff" else 3 for c in lines]),
                    colorbar=dict(title=dict(text="PRM step score", side="top"), orientation="h", thickness=10,
                                  len=0.4, x=1, xanchor="right", y=1.0, yanchor="bottom"),
                    showscale=True),
        showlegend=False, name="nodes"))
    unscored = [n for n in nodes if n.step_score is None]
    if unscored:  # NaN colours draw nothing: overlay grey markers for the root and unscored steps
        fig.add_trace(Scatter(x=[pos[n.id][0] for n in unscored], y=[pos[n.id][1] for n in unscored],
                              mode="markers", marker=dict(color=UNSCORED, size=[22 if n.id == 0 else 11 for n in unscored],
                                                          symbol=["square" if n.id == 0 else "circle" for n in unscored]),
                              customdata=[n.id for n in unscored], hovertext=[_hover(tree, n) for n in unscored],
                              hoverinfo="text", showlegend=False, name="unscored"))
    if stubs:  # one marker per folded group of pruned children, labelled with its count
        fig.add_trace(Scatter(
            x=[pos["pruned", p][0] for p in stubs], y=[pos["pruned", p][1] for p in stubs], mode="markers+text",
            text=[f"+{len(group)} pruned" for group in stubs.values()], textposition="bottom center",
            textfont=dict(size=10, color="#6b7075"), customdata=[group[0].id for group in stubs.values()],
            hovertext=[_stub_hover(group) for group in stubs.values()], hoverinfo="text",
            marker=dict(symbol=SYMBOLS["pruned"], color=UNSCORED, size=12), showlegend=False, name="folded"))
    for name, (label, marker) in _legend(tree, bool(voters), bool(tied)).items():  # legend: shapes, not data
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines" if "line" in marker else "markers",
                                 name=label, hoverinfo="skip", showlegend=True, **marker))
    verdict = next((e.message for e in tree.events if e.kind == "stage" and e.message.startswith("Verify:")), None)
    if verdict:  # fast/slow: what the check of the fast answer decided
        fig.add_annotation(text=html.escape(verdict), x=0, y=1, xref="paper", yref="paper", xanchor="left",
                           yanchor="top", showarrow=False, font=dict(size=11, color=FAST), align="left")
    fig.update_layout(
        title=dict(text=html.escape(title if title is not None else tree_title(tree)), x=0.01),
        height=height, margin=dict(l=10, r=10, t=60, b=40), plot_bgcolor="white",
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor=None),
        legend=dict(orientation="h", x=0, y=0, yanchor="top", font=dict(size=11), itemclick=False,
                    itemdoubleclick=False),
        hoverlabel=dict(align="left"), dragmode="pan", uirevision=tree.run.get("question", "tree"),
    )
    return fig


def icicle_figure(tree: SearchTree, height: int = 480) -> go.Figure:
    """The tree as an icicle: each step a block under its parent, as wide as its subtree, coloured by its
    score. It stays readable at hundreds of nodes, and clicking a block zooms into its subtree."""
    nodes = tree.nodes()
    labels = [("question" if n.id == 0 else f"{n.id}" + (f" → {n.answer}" if n.answer is not None else ""))
              for n in nodes]
    fig = go.Figure(go.Icicle(
        ids=[str(n.id) for n in nodes], parents=["" if n.parent is None else str(n.parent) for n in nodes],
        labels=[html.escape(x) for x in labels], hovertext=[_hover(tree, n) for n in nodes], hoverinfo="text",
        marker=dict(colors=[n.step_score if n.step_score is not None else 0.5 for n in nodes], cmin=0, cmax=1,
                    colorscale=COLORSCALE, line=dict(color=[SELECTED if n.selected else "#ffffff" for n in nodes],
                                                     width=[3 if n.selected else 1 for n in nodes])),
        customdata=[n.id for n in nodes], tiling=dict(orientation="v"), maxdepth=8, branchvalues="remainder",
        textfont=dict(size=11), opacity=1.0))
    fig.update_layout(height=height, margin=dict(l=4, r=4, t=30, b=4),
                      title=dict(text=html.escape(tree_title(tree)) + " · click a block to zoom in", x=0.01,
                                 font=dict(size=13)))
    return fig


def _subtree(tree: SearchTree, node_id: int) -> list[int]:
    out, stack = [], [node_id]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(c.id for c in tree.children(n))
    return out


def _stub_hover(group: list) -> str:
    reasons = [html.escape(n.reason) for n in group[:4] if n.reason]
    more = f"<br>… and {len(group) - 4} more" if len(group) > 4 else ""
    return f"<b>{len(group)} pruned step(s)</b><br>" + "<br>".join(reasons) + more


def waiting_figure(title: str, height: int = 420) -> go.Figure:
    """A placeholder for a tree that is still being searched (the compare view)."""
    fig = go.Figure()
    fig.add_annotation(text="waiting for its turn…", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=dict(text=html.escape(title), x=0.01), height=height, plot_bgcolor="white",
                      xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def tree_title(tree: SearchTree) -> str:
    """"Beam search · 65 nodes": the strategy's name as people read it, not its code name."""
    strategy = str(tree.run.get("strategy", ""))
    name = STRATEGIES[strategy].title if strategy in STRATEGIES else strategy or "Search"
    return f"{name} · {len(tree)} nodes"


def _legend(tree: SearchTree, votes: bool, ties: bool = False) -> dict[str, tuple[str, dict]]:
    grey = dict(color=UNSCORED, size=10)
    items = {"question": ("question", dict(marker=dict(symbol=SYMBOLS["question"], **grey))),
             "step": ("step (colour: PRM score)", dict(marker=dict(symbol=SYMBOLS["step"], **grey))),
             "answer": ("final answer", dict(marker=dict(symbol=SYMBOLS["answer"], **grey)))}
    if any(n.status == "pruned" for n in tree.nodes()):
        items["pruned"] = ("pruned", dict(marker=dict(symbol=SYMBOLS["pruned"], **grey)))
    if any(n.selected for n in tree.nodes()):
        items["chosen"] = ("chosen path", dict(line=dict(color=SELECTED, width=4)))
    if votes:
        items["voted"] = ("voted for the answer", dict(line=dict(color=VOTED, width=2.5)))
    if ties:
        items["tied"] = ("tied with the chosen answer (the first found won)",
                         dict(marker=dict(symbol=SYMBOLS["answer"], color="#ffffff", size=10,
                                          line=dict(color=TIED, width=3))))
    if any(n.stage == "fast" for n in tree.nodes()):
        items["fast"] = ("fast stage", dict(line=dict(color=FAST, width=2.5)))
        if any(n.stage == "slow" for n in tree.nodes()):
            items["slow"] = ("slow stage (beam search)", dict(line=dict(color="#b0b4ba", width=1.2)))
    return items


def vote_figure(selection: Selection | dict | None, height: int = 260) -> go.Figure:
    """A bar chart of the answers' votes (or confidences), the chosen answer in blue."""
    sel = Selection(**selection) if isinstance(selection, dict) else selection
    fig = go.Figure()
    if sel and sel.votes:
        answers = sorted(sel.votes, key=lambda a: -sel.votes[a])[:12]
        fig.add_trace(go.Bar(x=[html.escape(str(a)) for a in answers], y=[sel.votes[a] for a in answers],
                             marker_color=[SELECTED if a == sel.answer else "#b0b4ba" for a in answers]))
        fig.update_layout(title=dict(text=html.escape(f"{sel.rule} per answer"), x=0.01), xaxis=dict(type="category"))
    else:
        text = sel.detail if sel else "No answer yet."
        fig.add_annotation(text=html.escape(text), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(xaxis=dict(visible=False), yaxis=dict(visible=False))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
    return fig


# Runs in the page (the app and the standalone HTML) after every redraw, zoom included: hides an answer
# label that would overlap one already shown, biggest groups ("×5") first, so labels never collide at
# any plot size. Plotly itself never hides scatter text.
DECLUTTER_JS = """
function rvDeclutter(gd) {
  const count = (t) => { const m = t.textContent.match(/×(\\d+)$/); return m ? +m[1] : 1; };
  const texts = Array.from(gd.querySelectorAll('.scatterlayer .trace text')).filter((t) => t.textContent);
  texts.forEach((t) => { t.style.display = ''; });
  const kept = [];
  texts.sort((a, b) => count(b) - count(a)).forEach((t) => {
    const r = t.getBoundingClientRect();
    if (!r.width) return;
    const hit = kept.some((k) => r.left < k.right + 2 && r.right > k.left - 2 && r.top < k.bottom && r.bottom > k.top);
    if (hit) t.style.display = 'none'; else kept.push(r);
  });
}
"""


def standalone_html(tree: SearchTree) -> str:
    """A self-contained page of a run (plotly.js inlined, so it opens offline): the question, the answer
    and how it was chosen, the chosen path step by step, and the tree with its legend, filling the page.
    All text from the tree is HTML-escaped."""
    sel = tree.run.get("selection") or {}
    node = sel.get("node_id")
    steps = [n for n in tree.path(node)[1:]] if node is not None and node in tree.graph else []
    path = "".join(f"<li>{html.escape(n.text)} <small>(step score {n.step_score:.3f})</small></li>"
                   if n.step_score is not None else f"<li>{html.escape(n.text)}</li>" for n in steps)
    answer = sel.get("answer")
    head = (f"<h1>{html.escape(tree_title(tree))}</h1><p><b>Question.</b> {html.escape(tree.question)}</p>"
            f"<p><b>Answer:</b> {html.escape(str(answer)) if answer is not None else 'none'} — "
            f"{html.escape(str(sel.get('detail', '')))}</p>" + (f"<details open><summary>The chosen path</summary>"
                                                               f"<ol>{path}</ol></details>" if path else ""))
    script = DECLUTTER_JS + "const gd = document.getElementById('{plot_id}'); gd.on('plotly_afterplot', () => rvDeclutter(gd)); rvDeclutter(gd);"
    fig = tree_figure(tree)
    fig.update_layout(height=None, autosize=True)  # the page's height (below), not the app's fixed one
    figure = fig.to_html(include_plotlyjs=True, full_html=False, default_width="100%",
                                       default_height="80vh", post_script=script,
                                       config={"scrollZoom": True, "displaylogo": False, "responsive": True})
    style = ("body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222}h1{font-size:1.3rem;margin:0 0 .5rem}"
             "p,li{max-width:70rem}small{color:#666}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(tree.question[:80])}</title>"
            f"<style>{style}</style></head><body>{head}{figure}</body></html>")
