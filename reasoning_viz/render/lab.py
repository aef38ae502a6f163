"""Figures and tables of a lab run's summary (``lab.summarise``). Pure drawing: no model is called."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from ..lab import SAMPLED, STRATEGY_TITLES

# Okabe-Ito colours, one per strategy (colour-blind safe), the greedy baselines in grey and black
COLORS = {"best_of_n": "#e69f00", "self_consistency": "#56b4e9", "weighted_vote": "#009e73",
          "beam_search": "#d55e00", "dvts": "#cc79a7", "coverage": "#0072b2"}


def level_name(level: str) -> str:
    return "all levels" if level == "all" else f"level {level}"


def _baselines(fig: go.Figure, summary: dict, level: str) -> None:
    for name, dash, color in (("small", "dash", "#666666"), ("large", "dot", "#000000")):
        value = summary["greedy"].get(name, {}).get(level)
        if value is not None:
            label = "student, greedy" if name == "small" else "larger model, greedy"
            fig.add_hline(y=value, line_dash=dash, line_color=color, annotation_text=f"{label} {value:.0f}%",
                          annotation_position="bottom right" if name == "small" else "top left")


def _axes(fig: go.Figure, title: str, x_title: str, log_x: bool = True) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="accuracy %", yaxis_range=[0, 102],
                      template="plotly_white", margin=dict(l=50, r=20, t=50, b=45), height=380,
                      legend=dict(orientation="h", y=-0.22), uirevision="lab")
    if log_x:
        fig.update_xaxes(type="log", dtick=0.30102999566, tickformat="d")  # ticks at 1, 2, 4, …
    return fig


def accuracy_figure(summary: dict, level: str = "all", x: str = "n") -> go.Figure:
    """Accuracy against N (``x="n"``) or against policy tokens per problem (``x="tokens"``), one line
    per strategy, with the greedy baselines as horizontal lines."""
    fig = go.Figure()
    for strategy, by_level in summary["accuracy"].items():
        points = sorted(by_level.get(level, {}).items(), key=lambda kv: int(kv[0]))
        if not points:
            continue
        xs = [int(n) if x == "n" else p["tokens"] for n, p in points]
        fig.add_trace(go.Scatter(x=xs, y=[p["accuracy"] for _, p in points], mode="lines+markers",
                                 name=STRATEGY_TITLES[strategy] + (" (estimated)" if strategy in SAMPLED else ""),
                                 line_color=COLORS[strategy],
                                 customdata=[int(n) for n, _ in points],
                                 hovertemplate="N=%{customdata}: %{y:.1f}%<extra>" + STRATEGY_TITLES[strategy] + "</extra>"))
    _baselines(fig, summary, level)
    what = "N (samples or beams)" if x == "n" else "policy tokens per problem"
    return _axes(fig, f"Accuracy against {'N' if x == 'n' else 'generated tokens'}, {level_name(level)}", what)


def coverage_figure(summary: dict, level: str = "all") -> go.Figure:
    """Coverage@k (some sample is right) beside what a selection rule makes of the same k samples."""
    fig = go.Figure()
    cov = sorted(summary["coverage"].get(level, {}).items(), key=lambda kv: int(kv[0]))
    if cov and all(v is not None for _, v in cov):
        fig.add_trace(go.Scatter(x=[int(k) for k, _ in cov], y=[v for _, v in cov], mode="lines+markers",
                                 name="coverage@k (any sample right)", line_color=COLORS["coverage"]))
    for strategy in SAMPLED:
        points = sorted(summary["accuracy"].get(strategy, {}).get(level, {}).items(), key=lambda kv: int(kv[0]))
        if points:
            fig.add_trace(go.Scatter(x=[int(k) for k, _ in points], y=[p["accuracy"] for _, p in points],
                                     mode="lines+markers", name=STRATEGY_TITLES[strategy] + "@k",
                                     line_color=COLORS[strategy]))
    _baselines(fig, summary, level)
    return _axes(fig, f"Coverage against selection, {level_name(level)}", "k (samples)")


def small_vs_large_figure(summary: dict) -> go.Figure:
    """Per level: the student's greedy answer, its best search at the largest N, the larger model's greedy."""
    levels = [lv for lv in summary["levels"] if lv != "all"]
    top = str(max(summary["budgets"]))
    best = [summary["envelope"].get(lv, {}).get(top, {}) for lv in levels]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[f"L{lv}" for lv in levels], y=[summary["greedy"].get("small", {}).get(lv) for lv in levels],
                         name="student, greedy", marker_color="#999999"))
    fig.add_trace(go.Bar(x=[f"L{lv}" for lv in levels], y=[b.get("accuracy") for b in best],
                         name=f"student + its best search at N={top}", marker_color=COLORS["beam_search"],
                         text=[STRATEGY_TITLES.get(b.get("strategy"), "") for b in best], textposition="inside"))
    if "large" in summary["greedy"]:
        fig.add_trace(go.Bar(x=[f"L{lv}" for lv in levels], y=[summary["greedy"]["large"].get(lv) for lv in levels],
                             name="larger model, greedy", marker_color="#000000"))
    fig.update_layout(barmode="group")
    return _axes(fig, "Small model with search against a larger one without, per level", "level", log_x=False)


def envelope_rows(summary: dict) -> list[list[str]]:
    """The compute-optimal envelope as table rows: per level, the best strategy (and accuracy) at each N."""
    rows = []
    for lv in summary["levels"]:
        cells = []
        for n in summary["budgets"]:
            best = summary["envelope"].get(lv, {}).get(str(n))
            cells.append(f"{STRATEGY_TITLES[best['strategy']]} {best['accuracy']:.0f}" if best else "–")
        rows.append([level_name(lv), *cells])
    return rows


def lab_markdown(summary: dict) -> str:
    """The lab's numbers as Markdown tables (the README's): accuracy per strategy and N, overall and by
    level at the largest N, coverage, and the envelope."""
    budgets, levels = summary["budgets"], summary["levels"]
    top = str(max(budgets))
    head = "| strategy | " + " | ".join(f"N={n}" for n in budgets) + " |\n|---|" + "---|" * len(budgets)
    lines = [f"Accuracy % over all {summary['problems']} problems:", "", head]
    for strategy, by_level in summary["accuracy"].items():
        cells = [by_level["all"].get(str(n), {}).get("accuracy") for n in budgets]
        lines.append(f"| {STRATEGY_TITLES[strategy]} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    cov = [summary["coverage"]["all"].get(str(n)) for n in budgets]
    lines.append("| coverage@N | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cov) + " |")
    for name, title in (("small", "student, greedy"), ("large", "larger model, greedy")):
        if name in summary["greedy"]:
            lines.append(f"| {title} | {summary['greedy'][name]['all']:.1f} |" + " |" * (len(budgets) - 1))
    lines += ["", f"By level at N={top} (accuracy %):", "",
              "| | " + " | ".join(level_name(lv) for lv in levels) + " |\n|---|" + "---|" * len(levels)]
    for strategy, by_level in summary["accuracy"].items():
        cells = [by_level.get(lv, {}).get(top, {}).get("accuracy") for lv in levels]
        lines.append(f"| {STRATEGY_TITLES[strategy]} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    for name, title in (("small", "student, greedy"), ("large", "larger model, greedy")):
        if name in summary["greedy"]:
            lines.append(f"| {title} | " + " | ".join(f"{summary['greedy'][name][lv]:.1f}" for lv in levels) + " |")
    lines += ["", "Best strategy per level and N (the compute-optimal envelope):", "",
              "| level | " + " | ".join(f"N={n}" for n in budgets) + " |\n|---|" + "---|" * len(budgets)]
    lines += ["| " + " | ".join(row) + " |" for row in envelope_rows(summary)]
    return "\n".join(lines)


def lab_html(summary: dict) -> str:
    """A self-contained page (plotly.js inlined, opens offline) with every lab figure, all levels first."""
    figures = [small_vs_large_figure(summary)]
    for lv in summary["levels"][::-1]:  # "all" is last in the summary; first on the page
        figures += [accuracy_figure(summary, lv), coverage_figure(summary, lv), accuracy_figure(summary, lv, "tokens")]
    parts = [fig.to_html(include_plotlyjs=(i == 0), full_html=False, default_width="100%")
             for i, fig in enumerate(figures)]
    settings = html.escape(", ".join(f"{k}={v}" for k, v in summary["settings"].items()))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Reasoning Tree Explorer: lab run</title></head>"
            f"<body style='font-family:sans-serif;max-width:1000px;margin:auto'><h1>Lab run</h1><p>{settings}</p>"
            "<p>Best-of-N and the votes at each N are estimated from one run's samples (the mean over N-subsets).</p>"
            + "".join(parts) + "</body></html>")
