"""Figures for the comparison report, drawn from the tidy tables of :mod:`analysis.stats`.

Each function returns a matplotlib ``Figure`` on the Agg canvas (no pyplot state, no display);
:func:`png` turns one into bytes. Captions live here too, so the report states what is drawn.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import stats


def _figure(width: float, height: float) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def palette(arms: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """One stable colour per arm."""
    return dict(zip(arms, sns.color_palette("colorblind", n_colors=max(len(arms), 1)), strict=False))


def png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def svg(fig: Figure) -> bytes:
    """The figure as SVG bytes (vector: for papers and slides)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


X_LABELS = {"episode": "episode", "env_step": "env steps"}


def learning_curves(
    curve: pd.DataFrame,
    arms: Sequence[str],
    by: str = "algo",
    threshold: float | None = None,
    x: str = "episode",
) -> Figure:
    """Mean return against ``x`` (episode or env_step) with its band, one line per arm (from
    :func:`stats.learning_curve`)."""
    fig, ax = _figure(7.5, 4.2)
    colours = palette(arms)
    sns.lineplot(
        data=curve,
        x=x,
        y="mean",
        hue=by,
        hue_order=list(arms),
        palette=colours,
        errorbar=None,
        ax=ax,
        linewidth=1.2,
    )
    for arm, g in curve.groupby(by):
        ax.fill_between(g[x], g["lo"], g["hi"], color=colours[arm], alpha=0.2, linewidth=0)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="0.4", linestyle=":", linewidth=1, label="solve threshold")
        ax.legend(title=by)
    ax.set(xlabel=X_LABELS.get(x, x), ylabel="return (mean over runs)", title="Learning curves")
    return fig


def learning_curve_caption(
    curve: pd.DataFrame, confidence: float = stats.CONFIDENCE, min_frac: float = 0.5, x: str = "episode"
) -> str:
    """What the learning-curve figure shows and how unequal run lengths are handled."""
    where = (
        "against env steps (each run holds the return of its last finished episode)"
        if x == "env_step"
        else "per episode"
    )
    return (
        f"Mean episode return across runs {where}, with a {confidence:.0%} percentile-bootstrap "
        "band over the runs (seeded), which stays within the returns observed, so within the "
        f"reward range. Runs stop at different points (most stop when solved), so each arm's curve "
        f"is drawn only while at least {min_frac:.0%} of its runs (rounded up) are still "
        "running; nothing is carried forward past a run's end, and the tail of a curve averages "
        "the runs that had not yet stopped, which are mostly the slower ones."
    )


def solve_curves(km: pd.DataFrame, arms: Sequence[str], by: str = "algo") -> Figure:
    """Kaplan-Meier fraction of runs solved by episode n, with bands and censoring ticks."""
    fig, ax = _figure(7.5, 4.2)
    colours = palette(arms)
    for arm in arms:
        g = km[km[by] == arm]
        ax.step(g["episode"], g["fraction_solved"], where="post", color=colours[arm], label=arm)
        ax.fill_between(
            g["episode"], g["lo"], g["hi"], step="post", color=colours[arm], alpha=0.15, linewidth=0
        )
        cens = g[g["censored_here"] > 0]
        ax.plot(
            cens["episode"],
            cens["fraction_solved"],
            "|",
            color=colours[arm],
            markersize=10,
            markeredgewidth=1.5,
        )
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1)
    ax.set(
        xlabel="episode",
        ylabel="fraction of runs solved",
        ylim=(-0.02, 1.02),
        title="Solved by episode n (Kaplan-Meier)",
    )
    ax.legend(title=by, loc="upper left")
    return fig


def solve_curves_caption(confidence: float = stats.CONFIDENCE) -> str:
    """Caption of :func:`solve_curves`."""
    return (
        f"Kaplan-Meier estimate of the fraction of runs solved by each episode, with a "
        f"pointwise {confidence:.0%} exact-binomial band (none for a single run). Unsolved, "
        "FAILED and KILLED runs are right-censored at their episode count (tick marks); the "
        "dotted line at 0.5 crosses each curve at its KM median."
    )


def episodes_to_solve(runs: pd.DataFrame, summary: pd.DataFrame, by: str = "algo") -> Figure:
    """Per-run episodes-to-solve (censored runs as '>' at their episode count) with median and IQM."""
    arms = list(summary[by])
    fig, ax = _figure(7.5, 1.2 + 0.7 * len(arms))
    t, solved = stats.solve_times(runs)
    data = runs.assign(
        t=t, outcome=np.where(solved, "solved", "not solved (censored)"), **{by: runs[by].astype(str)}
    )
    for outcome, marker in (("solved", "o"), ("not solved (censored)", ">")):
        part = data[data["outcome"] == outcome]
        if not part.empty:
            sns.stripplot(
                data=part,
                x="t",
                y=by,
                order=arms,
                marker=marker,
                color="0.45",
                alpha=0.6,
                size=5,
                jitter=0.12,
                ax=ax,
                label=outcome,
            )
    y = np.arange(len(arms))
    for offset, col, colour in ((-0.3, "median", "black"), (0.3, "iqm", "tab:red")):
        est = summary[col].to_numpy()
        err = np.abs(np.vstack([est - summary[f"{col}_lo"], summary[f"{col}_hi"] - est]))
        ax.errorbar(
            est,
            y + offset,
            xerr=np.nan_to_num(err, nan=0.0, posinf=0.0, neginf=0.0),  # an unbounded end: no bar
            fmt="D",
            color=colour,
            capsize=3,
            markersize=5,
            label=f"{col.upper() if col == 'iqm' else col} with 95% CI",
        )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=False))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    ax.set(xlabel="episodes to solve", ylabel=by, title="Episodes to solve per run")
    return fig


def episodes_to_solve_caption(confidence: float = stats.CONFIDENCE) -> str:
    """Caption of :func:`episodes_to_solve`."""
    return (
        f"Each grey mark is a run; '>' marks a run that never solved, placed at its episode "
        f"count (its true value is larger). Diamonds: KM median (black) and interquartile mean "
        f"(red) with {confidence:.0%} CIs (an end the runs cannot bound is not drawn); an arm "
        "with more than half its runs unsolved has its median drawn at its last episode, a lower "
        "bound."
    )


def improvement_matrix(pairs: pd.DataFrame, arms: Sequence[str]) -> Figure:
    """Heatmap of P(row arm solves in fewer episodes than column arm), annotated with CIs."""
    matrix = stats.improvement_matrix(pairs, arms)
    notes = pd.DataFrame("", index=list(arms), columns=list(arms))
    for r in pairs.itertuples(index=False):
        ci = math.isfinite(r.p_lo)
        notes.loc[r.a, r.b] = f"{r.p_a_faster:.2f}" + (f"\n[{r.p_lo:.2f}, {r.p_hi:.2f}]" if ci else "")
        notes.loc[r.b, r.a] = f"{1 - r.p_a_faster:.2f}" + (
            f"\n[{1 - r.p_hi:.2f}, {1 - r.p_lo:.2f}]" if ci else ""
        )
    side = 1.6 + 1.0 * len(arms)
    fig, ax = _figure(side + 1.2, side)
    with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, pending deprecation
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        sns.heatmap(
            matrix,
            annot=notes.to_numpy(),
            fmt="",
            cmap="RdBu_r",
            vmin=0,
            vmax=1,
            center=0.5,
            square=True,
            linewidths=0.5,
            cbar_kws={"label": "P(row faster)"},
            ax=ax,
            annot_kws={"fontsize": 8},
        )
    ax.set(xlabel="column arm", ylabel="row arm", title="P(row solves in fewer episodes)")
    return fig


def improvement_matrix_caption(confidence: float = stats.CONFIDENCE) -> str:
    """Caption of :func:`improvement_matrix`."""
    return (
        f"Probability that a random run of the row arm solves in fewer episodes than a random "
        f"run of the column arm, both censored at the smaller budget of the two (ties and "
        f"undecidable censored pairs count 1/2), with {confidence:.0%} Newcombe score CIs. 0.5 "
        "means no difference."
    )
