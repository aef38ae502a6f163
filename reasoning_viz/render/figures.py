"""Plotly figures of a search tree and of the answer vote. Pure drawing: no model is ever called.

Node colour is the step score (red = doubtful, green = confident), node size grows with MCTS
visits, pruned nodes are faded crosses, finished paths end in a diamond labelled with the answer
and ✓/✗ when a gold answer is known, and the chosen answer's path is drawn thick. ``uirevision``
keeps the user's zoom and pan while a live search redraws the figure.
"""

from __future__ import annotations

import html
import math
import textwrap

import plotly.graph_objects as go

from ..select import Selection
from ..tree import SearchTree
from .layout import tidy_layout

WEBGL_ABOVE = 500  # nodes; beyond this, WebGL traces keep pan and zoom smooth
COLORSCALE = "RdYlGn"
UNSCORED = "#9aa0a6"
SELECTED = "#1f4fd1"


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


def tree_figure(tree: SearchTree, title: str | None = None, height: int = 560,
                highlight: int | None = None) -> go.Figure:
    """The whole tree, kept and pruned branches, with per-step scores; ``highlight`` rings a node."""
    pos = tidy_layout(tree)
    nodes = tree.nodes()
    big = len(nodes) > WEBGL_ABOVE
    Scatter = go.Scattergl if big else go.Scatter
    fig = go.Figure()
    edge_groups = {"kept": ([], [], dict(color="#b0b4ba", width=1.2)),
                   "pruned": ([], [], dict(color="#d9dce0", width=1, dash="dot")),
                   "selected": ([], [], dict(color=SELECTED, width=4))}
    for n in nodes:
        if n.parent is None:
            continue
        group = "selected" if n.selected else "pruned" if n.status == "pruned" else "kept"
        xs, ys, _ = edge_groups[group]
        (x0, y0), (x1, y1) = pos[n.parent], pos[n.id]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for name, (xs, ys, line) in edge_groups.items():
        if xs:
            fig.add_trace(Scatter(x=xs, y=ys, mode="lines", line=line, hoverinfo="skip", showlegend=False,
                                  name=f"{name} edges"))
    colors, sizes, symbols, opac, labels, lines = [], [], [], [], [], []
    for n in nodes:
        colors.append(n.step_score if n.step_score is not None else math.nan)
        sizes.append(22 if n.id == 0 else 11 + 3 * math.sqrt(n.visits or 0))
        symbols.append("square" if n.id == 0 else "x" if n.status == "pruned"
                       else "diamond" if n.status == "terminal" else "circle")
        opac.append(0.35 if n.status == "pruned" else 1.0)
        mark = "" if n.correct is None else ("✓" if n.correct else "✗")
        labels.append(html.escape(f"{n.answer}{mark}") if n.status == "terminal" and n.answer is not None else "")
        lines.append(SELECTED if n.selected else "#ffffff" if n.id != highlight else "#000000")
    fig.add_trace(Scatter(
        x=[pos[n.id][0] for n in nodes], y=[pos[n.id][1] for n in nodes], mode="markers+text",
        text=labels, textposition="bottom center", textfont=dict(size=11),
        customdata=[n.id for n in nodes], hovertext=[_hover(tree, n) for n in nodes], hoverinfo="text",
        marker=dict(color=colors, cmin=0, cmax=1, colorscale=COLORSCALE, size=sizes, symbol=symbols,
                    opacity=opac, line=dict(color=lines, width=[3 if c != "#ffffff" else 1 for c in lines]),
                    colorbar=dict(title=dict(text="step score"), thickness=12, len=0.8),
                    showscale=True),
        showlegend=False, name="nodes"))
    unscored = [n for n in nodes if n.step_score is None]
    if unscored:  # NaN colours draw nothing: overlay grey markers for the root and unscored steps
        fig.add_trace(Scatter(x=[pos[n.id][0] for n in unscored], y=[pos[n.id][1] for n in unscored],
                              mode="markers", marker=dict(color=UNSCORED, size=[22 if n.id == 0 else 11 for n in unscored],
                                                          symbol=["square" if n.id == 0 else "circle" for n in unscored]),
                              customdata=[n.id for n in unscored], hovertext=[_hover(tree, n) for n in unscored],
                              hoverinfo="text", showlegend=False, name="unscored"))
    strategy = tree.run.get("strategy", "")
    fig.update_layout(
        title=dict(text=html.escape(title if title is not None else f"{strategy} · {len(nodes)} nodes"), x=0.01),
        height=height, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white",
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor=None),
        hoverlabel=dict(align="left"), dragmode="pan", uirevision=tree.run.get("question", "tree"),
    )
    return fig


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


def standalone_html(fig: go.Figure, title: str = "Reasoning tree") -> str:
    """A self-contained HTML page of the figure (plotly.js inlined, so it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"scrollZoom": True, "displaylogo": False},
                       default_width="100%", default_height="90vh").replace("<head>", f"<head><title>{html.escape(title)}</title>", 1)
