"""Comparison report: HTML (self-contained) and Markdown pages from MLflow runs, logged back to MLflow.

    python -m analysis.report --experiment CartPole-v1 [--tracking-uri URI] [--algo a b] [--env ..]
        [--group ..] [--sweep ..] [--tag k=v ..] [--run-ids ..] [--by algo] [--x episode|env_step]
        [--out DIR] [--no-log]

Writes ``report.html``, ``report.md``, the figures as PNG and SVG, ``runs.csv``, ``episodes.csv``,
``summary.csv`` and ``pairwise.csv`` into ``--out`` and logs them as artifacts of a report run
(tagged ``report=1``) in the same experiment. Exits 1 with a one-line error naming the cause and the
fix when the store is missing, empty or unreadable, the experiment does not exist, no run matches, an
arm asked for has no runs, a FINISHED run has no episodes, or the output cannot be written.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import logging
import math
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from analysis import plots, stats
from analysis.collect import Collection, CollectionError, RunQuery, collect, param_differences
from rlexp import command_name

PACKAGES = ("rlexp", "mlflow", "numpy", "scipy", "pandas", "seaborn", "matplotlib", "torch", "gymnasium")
MIN_FRAC = 0.5  # learning curves: keep an episode while >= this fraction of an arm's runs reach it


# --------------------------------------------------------------------------- analysis
@dataclass
class EnvAnalysis:
    """Everything computed for one environment; arms are the values of ``by``."""

    env: str
    by: str
    runs: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame
    km: pd.DataFrame
    curve: pd.DataFrame
    threshold: float | None
    notes: list[str] = field(default_factory=list)
    curve_x: str = "episode"  # the learning curves' x axis: episode or env_step

    @property
    def arms(self) -> list[str]:
        """Arms, fastest first."""
        return list(self.summary[self.by])


def _threshold(runs: pd.DataFrame) -> float | None:
    vals = runs.get("param.solve.threshold", pd.Series(dtype=object)).dropna().unique()
    try:
        return float(vals[0]) if len(vals) == 1 else None
    except ValueError:
        return None


def limitations(summary: pd.DataFrame, pairs: pd.DataFrame, by: str) -> list[str]:
    """Plain-language statements of what these runs cannot support."""
    notes = []
    if len(summary) == 1:
        notes.append(
            f"Only one {by} ({summary[by].iloc[0]}) matched: there is nothing to compare "
            "it with; the statistics below describe it alone."
        )
    for r in summary.to_dict("records"):
        arm = r[by]
        if r["runs"] == 1:
            notes.append(
                f"{arm} has a single run: no confidence interval can be computed and "
                "any difference could be seed luck."
            )
        elif r["runs"] < stats.MIN_SEEDS:
            notes.append(
                f"{arm} has only {r['runs']} runs (fewer than {stats.MIN_SEEDS} seeds): its "
                "intervals are wide (its median cannot be bounded) and comparisons involving it are weak."
            )
        if r["cannot_solve"] == r["runs"]:
            notes.append(
                f"No run of {arm} could solve: its budget ({r['budgets']} episodes) is shorter than "
                "solve.window, the episodes a solve needs."
            )
        elif r["cannot_solve"]:
            notes.append(
                f"{r['cannot_solve']} of {arm}'s runs could not solve: budget shorter than solve.window."
            )
        elif r["solved"] == 0:
            notes.append(
                f"{arm} never solved (up to {r['max_episodes']:.0f} episodes): its "
                "episodes-to-solve is only known to exceed its episode counts; it is ranked by its "
                "final return."
            )
        if r["failed"]:
            notes.append(
                f"{arm} has {r['failed']} FAILED/KILLED run(s), counted as unsolved where they "
                "stopped (flagged in the runs table); a run stopped by a pruner because it looked "
                "slow makes the arm look faster than it is."
            )
        if r["mixed_budgets"]:
            notes.append(
                f"{arm}'s runs had different budgets ({r['budgets']} episodes): comparisons "
                "censor them all at the smallest."
            )
    if len(pairs) and not pairs["verdict"].str.contains("solves in fewer").any():
        notes.append(
            f"No pair differs clearly (Holm-adjusted Gehan permutation p < {stats.ALPHA} and a "
            "P(A faster) CI excluding 0.5)."
        )
    return notes


def analyse(
    collection: Collection,
    by: str = "algo",
    *,
    seed: int = 0,
    n_permutations: int = stats.N_PERMUTATIONS,
    curve_x: str = "episode",
) -> list[EnvAnalysis]:
    """Statistics for each environment in the collection (arms compared within an env only)."""
    runs = collection.runs.assign(
        **{
            by: collection.runs[by]
            .astype(str)
            .replace({"nan": "(not recorded)", "None": "(not recorded)", "<NA>": "(not recorded)"})
        }
    )
    episodes = collection.episodes.drop(columns=[by], errors="ignore").merge(
        runs[["run_id", by]], on="run_id"
    )
    out = []
    for env, g in runs.groupby("env", sort=True):
        ep = episodes[episodes["run_id"].isin(g["run_id"])]
        summary = stats.summarize(g, by, ep)
        pairs = stats.compare(g, by, ep, n_permutations=n_permutations, seed=seed, summary=summary)
        out.append(
            EnvAnalysis(
                env=str(env),
                by=by,
                runs=g,
                summary=summary,
                pairs=pairs,
                km=stats.km_curves(g, by),
                curve=stats.learning_curve(ep, by, x=curve_x, min_frac=MIN_FRAC, seed=seed),
                threshold=_threshold(g),
                notes=limitations(summary, pairs, by),
                curve_x=curve_x,
            )
        )
    return out


# --------------------------------------------------------------------------- page model
@dataclass
class Fig:
    """A figure of the page: file stem, caption, PNG and SVG bytes."""

    name: str
    caption: str
    png: bytes
    svg: bytes

    @classmethod
    def of(cls, name: str, caption: str, fig: Figure) -> Fig:
        return cls(name, caption, plots.png(fig), plots.svg(fig))


@dataclass
class Section:
    """A titled block of the page; both renderers walk the same sections."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[Fig] = field(default_factory=list)
    level: int = 2


def _num(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(est: float, lo: float, hi: float, digits: int = 1, prefix: str = "") -> str:
    """``est [lo, hi]``; an end the data cannot bound reads "unbounded", no interval at all: none."""
    if not math.isfinite(est):
        return "n/a"
    if math.isnan(lo) and math.isnan(hi):
        return f"{prefix}{_num(est, digits)} (no interval)"
    lo_s = _num(lo, digits) if math.isfinite(lo) else "unbounded"
    hi_s = _num(hi, digits) if math.isfinite(hi) else "unbounded"
    return f"{prefix}{_num(est, digits)} [{lo_s}, {hi_s}]"


def median_text(r: dict) -> str:
    """The KM median cell: a value, '≥ value' or '> budget', with its interval and odd levels named."""
    if r["cannot_solve"] == r["runs"]:
        return f"none can solve (budget {r['budgets']} < solve.window)"
    if r["median_kind"] == "not reached":
        text = f"> {r['median']:.0f} (fewer than half solved)"
        return text + (f" [{_num(r['median_lo'], 0)}, unbounded]" if math.isfinite(r["median_lo"]) else "")
    if math.isnan(r["median_level"]):
        return f"{r['median']:.1f} (no interval from {r['runs']} runs)"
    prefix = "≥ " if r["median_kind"] == "lower bound" else ""
    text = _ci(r["median"], r["median_lo"], r["median_hi"], 1, prefix)
    if r["median_level"] < stats.CONFIDENCE:
        text += f" ({r['median_level']:.2%} interval, the most {r['runs']} runs give)"
    return text


def iqm_text(r: dict) -> str:
    """The IQM cell: exact with its interval, or '≥ value' with a lower limit only."""
    if r["iqm_exact"]:
        return _ci(r["iqm"], r["iqm_lo"], r["iqm_hi"], 1)
    if math.isnan(r["iqm_lo"]):
        return f"≥ {_num(r['iqm'])} (a lower bound, no interval)"
    return _ci(r["iqm"], r["iqm_lo"], math.inf, 1, "≥ ") + " (over a quarter unsolved: a lower bound)"


def summary_display(a: EnvAnalysis) -> pd.DataFrame:
    """The per-arm table as strings, ranked (≥ and > mark bounds: the arm has unsolved runs)."""
    rows = []
    for rank, r in enumerate(a.summary.to_dict("records"), 1):
        row = {
            "rank": rank,
            a.by: r[a.by],
            "runs": r["runs"],
            "solved": f"{r['solved']}/{r['runs']}",
            "FAILED/KILLED": r["failed"],
            "budget (episodes)": r["budgets"] + (" (mixed)" if r["mixed_budgets"] else ""),
            "median episodes [95% CI]": median_text(r),
            "IQM episodes [95% CI]": iqm_text(r),
        }
        if "final_return" in r:
            row["final return [95% CI]"] = _ci(r["final_return"], r["final_return_lo"], r["final_return_hi"])
            row["IQM final return [95% CI]"] = _ci(
                r["final_return_iqm"], r["final_return_iqm_lo"], r["final_return_iqm_hi"]
            )
            row[f"AUC to ep. {_num(r['auc_horizon'], 0)} [95% CI]"] = _ci(r["auc"], r["auc_lo"], r["auc_hi"])
        row["wall time s (median)"] = _num(r["wall_time_s"])
        row["steps/s (median)"] = _num(r["sps"], 0)
        rows.append(row)
    return pd.DataFrame(rows)


def pairs_display(a: EnvAnalysis) -> pd.DataFrame:
    """The pairwise table as strings."""

    def p(x: float) -> str:
        return "n/a" if not math.isfinite(x) else f"{x:.2g}"

    return pd.DataFrame(
        [
            {
                "A": r["a"],
                "B": r["b"],
                "compared up to episode": _num(r["horizon"], 0),
                "solved by then (A, B)": f"{r['solved_a']}/{r['n_a']}, {r['solved_b']}/{r['n_b']}",
                "P(A faster) [95% CI]": _ci(r["p_a_faster"], r["p_lo"], r["p_hi"], 2),
                "Gehan perm. p (Holm)": p(r["gehan_p_holm"]),
                "log-rank perm. p (Holm)": p(r["logrank_p_holm"]),
                "warnings": r["warnings"] or "-",
            }
            for r in a.pairs.to_dict("records")
        ]
    )


def slug(name: str, limit: int = 60) -> str:
    """A file-name-safe form of ``name``; long names are cut and keep a short hash to stay unique."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"
    if len(safe) <= limit:
        return safe
    return f"{safe[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def figures(a: EnvAnalysis) -> list[Fig]:
    """The figures of one environment."""
    stem = slug(a.env)
    figs = [
        Fig.of(
            f"{stem}-episodes-to-solve",
            plots.episodes_to_solve_caption(),
            plots.episodes_to_solve(a.runs, a.summary, a.by),
        ),
        Fig.of(f"{stem}-solve-curves", plots.solve_curves_caption(), plots.solve_curves(a.km, a.arms, a.by)),
    ]
    if not a.curve.empty:
        figs.append(
            Fig.of(
                f"{stem}-learning-curves",
                plots.learning_curve_caption(a.curve, min_frac=MIN_FRAC, x=a.curve_x),
                plots.learning_curves(a.curve, a.arms, a.by, a.threshold, x=a.curve_x),
            )
        )
    if len(a.arms) > 1:
        figs.append(
            Fig.of(
                f"{stem}-p-improvement",
                plots.improvement_matrix_caption(),
                plots.improvement_matrix(a.pairs, a.arms),
            )
        )
    return figs


METHODS = [
    "Episodes-to-solve is the first episode at which the mean return of the last `solve.window` "
    "episodes reaches `solve.threshold`. A run that never solved is right-censored at its episode "
    "count: we only know it needs more episodes than it ran. FAILED and KILLED runs are counted the "
    "same way, censored at the episodes they reached (flagged in the runs table), never left out.",
    "Common footing: each pair of arms is compared up to the smaller of their episode budgets "
    "(`train.max_episodes`); a run solved later than that counts as unsolved there, so a longer "
    "budget cannot make an arm look faster or slower.",
    "Test: a permutation test (exact over every relabelling of the runs when there are at most "
    f"{stats.EXACT_LIMIT:,}, else {stats.N_PERMUTATIONS:,} seeded random ones) of Gehan's generalised "
    "Wilcoxon statistic, which uses the censoring and keeps its 5% level at 3-5 seeds a side; a "
    "permutation log-rank p is shown alongside. p-values are Holm-corrected over all pairs of the "
    f"environment. A difference is claimed only when the Holm Gehan p < {stats.ALPHA} and the P(A "
    "faster) CI excludes 0.5.",
    "P(A faster) is the probability that a random run of A solves in fewer episodes than a random "
    "run of B on the common footing: ties count 1/2, a solved run beats a run unsolved at least as "
    "long, and pairs whose order the censoring hides count 1/2. Its CI is Newcombe's score "
    "interval (method 5), which is not a point even when every pair agrees.",
    "Median: the Kaplan-Meier median (the midpoint of two runs when the curve sits at exactly 1/2, "
    "as R's survfit, so numpy's median without censoring); '> N' when fewer than half the runs "
    "solved by N. Its CI inverts the KM band (Brookmeyer-Crowley); 5 runs give at most the exact "
    "93.75% interval [fastest, slowest] (labelled so), fewer cannot bound a median.",
    "IQM (mean of the middle half of the runs, scipy's trim_mean as rliable) counts an unsolved "
    "run at its episode count: exact while the unsolved runs are all in the trimmed top quarter, "
    "otherwise a lower bound (≥) with only a lower confidence limit. Its CI is the hull of the "
    "Tukey-McLaughlin and the percentile-bootstrap intervals, each at Hesterberg's expanded level "
    "for small samples (seeded).",
    "KM bands: pointwise exact binomial (Clopper-Pearson) intervals on the Greenwood effective "
    "number of runs, exact without censoring at any number of runs; none for a single run.",
    "Secondary outcomes, so that arms that do not solve still compare: final return (mean of a "
    "run's last `solve.window` returns) with a t-interval, its IQM across runs, and the area under "
    "the learning curve (mean return over the first N episodes, N the smallest budget; a run that "
    "stopped earlier counts its final return for the rest). Arms are ranked by KM median, then by "
    "the fraction solved by the smallest budget, then by final return.",
    "Coverage and false-positive rates of all of this are simulated by `python -m "
    "benchmarks.bench_stats` (benchmarks/results/bench_stats-*.md).",
]


def versions() -> dict[str, str]:
    """Versions of Python and the packages behind the analysis (this environment)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_sections(
    analyses: Sequence[EnvAnalysis],
    collection: Collection,
    query: RunQuery,
    *,
    command: str,
    report_run_id: str | None,
) -> list[Section]:
    """The page as sections: verdicts, per-environment tables and figures, methods, provenance."""
    by = analyses[0].by
    excluded = ", ".join(f"{n} {s}" for s, n in sorted(collection.excluded.items()))
    head = Section(
        "Verdicts",
        level=2,
        paragraphs=[
            f"Does one {by} solve the task in fewer episodes than another, and how sure are we? "
            f"{len(collection.runs)} runs analysed ({query.describe()})."
            + (f" Excluded by status: {excluded}." if excluded else "")
        ],
    )
    if collection.stale:  # RUNNING runs whose process is gone: killed with -9 or lost with their machine
        head.bullets.append(
            f"{len(collection.stale)} matching run(s) are stale (RUNNING, but their process is gone): "
            + "; ".join(f"{rid} ({why})" for rid, why in sorted(collection.stale.items()))
            + ". `python -m rlexp.runs close-stale` ends them as KILLED, keeping what they logged; "
            "then they count here as unsolved where they stopped.")
    for a in analyses:
        head.bullets += [f"**{a.env}**: {v}" for v in a.pairs["verdict"]]
        head.bullets += [f"**{a.env}**: {n}" for n in a.notes]
    sections = [head]
    for a in analyses:
        sec = Section(
            f"{a.env}",
            tables=[("Per-" + by + " statistics, fastest first", summary_display(a))],
            figures=figures(a),
        )
        if len(a.pairs):
            sec.tables.append(("Pairwise comparisons", pairs_display(a)))
        sections.append(sec)
    sections.append(Section("Methods", bullets=list(METHODS)))
    diffs = param_differences(collection.runs, by).reset_index()
    prov = Section(
        "Provenance",
        bullets=[
            f"Tracking URI: `{collection.tracking_uri}`; experiment id(s): "
            f"{', '.join(collection.experiment_ids)}",
            f"Query: {query.describe()}",
            f"Command: `{command}`",
            f"Report run: {report_run_id or 'not logged'}; generated "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            "Runs' git commits: "
            + (", ".join(sorted(collection.runs["git_commit"].dropna().unique())) or "not recorded"),
            "Runs' CPU instruction sets (`runtime.cpu`; seeded runs reproduce only on the same one): "
            + (", ".join(sorted(collection.runs["cpu"].dropna().unique())) or "not recorded"),
            "Analysis environment: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        ],
    )
    prov.tables.append(
        (f"Params that differ between {by}s (or within one)", diffs)
        if len(diffs)
        else ("Params: no differences besides the seed", pd.DataFrame())
    )
    t, solved = stats.solve_times(collection.runs)
    runs_tab = collection.runs[["run_id", "env", by, "seed", "group", "status"]].assign(
        status=[
            f"{x} (censored where it stopped)" if x in stats.FAILED_STATUSES else x
            for x in collection.runs["status"]
        ],
        solved=solved,
        budget=[_num(b, 0) for b in stats.budgets(collection.runs)],
        episodes_to_solve=[f"{x:.0f}" if s else f"> {x:.0f}" for x, s in zip(t, solved, strict=True)],
    )
    prov.tables.append(("Runs", runs_tab))
    sections.append(prov)
    return sections


# --------------------------------------------------------------------------- rendering


def _md_inline_to_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    if df.empty:
        return ""

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def render_markdown(title: str, sections: Sequence[Section]) -> str:
    """Markdown page; figures are referenced as PNG files written next to it."""
    out = [f"# {title}", ""]
    for s in sections:
        out += ["#" * s.level + " " + s.title, ""]
        out += [p + "\n" for p in s.paragraphs]
        out += [f"- {b}" for b in s.bullets] + ([""] if s.bullets else [])
        for caption, df in s.tables:
            out += [f"**{caption}**", "", markdown_table(df), ""]
        for f in s.figures:
            out += [f"![{f.name}]({f.name}.png)", "", f"*{f.caption}*", ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1em 0 2em}figure img{max-width:100%}
figcaption{font-size:.9em;color:#555;max-width:800px}code{background:#f3f3f3;padding:0 .2em}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    """Self-contained HTML page: figures embedded as base64 PNG, no external resources."""
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for s in sections:
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        out += [f"<p>{_md_inline_to_html(p)}</p>" for p in s.paragraphs]
        if s.bullets:
            out.append("<ul>" + "".join(f"<li>{_md_inline_to_html(b)}</li>" for b in s.bullets) + "</ul>")
        for caption, df in s.tables:
            out.append(f"<h4>{html.escape(caption)}</h4>")
            if not df.empty:
                out.append(df.to_html(index=False, border=0, escape=True, na_rep="-"))
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(f.name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def write(
    out_dir: Path,
    title: str,
    sections: Sequence[Section],
    analyses: Sequence[EnvAnalysis],
    collection: Collection,
) -> dict[str, Path]:
    """Write the pages, figures and tables into ``out_dir``; returns the written paths by role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md"}
    paths["html"].write_text(render_html(title, sections), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(title, sections), encoding="utf-8")
    for s in sections:
        for f in s.figures:
            (out_dir / f"{f.name}.png").write_bytes(f.png)
            (out_dir / f"{f.name}.svg").write_bytes(f.svg)
    paths["runs"], paths["episodes"] = collection.save(out_dir)
    paths["summary"], paths["pairwise"] = out_dir / "summary.csv", out_dir / "pairwise.csv"
    pd.concat([a.summary.assign(env=a.env) for a in analyses]).to_csv(paths["summary"], index=False)
    pd.concat([a.pairs.assign(env=a.env) for a in analyses]).to_csv(paths["pairwise"], index=False)
    return paths


# --------------------------------------------------------------------------- MLflow + CLI
def start_report_run(collection: Collection, by: str, query: RunQuery) -> str:
    """Create the report run (tagged ``report=1``) in the analysed experiment; returns its id."""
    client = MlflowClient(collection.tracking_uri)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        collection.experiment_ids[0],
        run_name=f"report-{stamp}",
        tags={
            "report": "1",
            "report.by": by,
            "report.n_runs": str(len(collection.runs)),
            "report.query": query.describe()[:4000],
        },
    )
    return run.info.run_id


def finish_report_run(tracking_uri: str, run_id: str, out_dir: Path, ok: bool) -> None:
    """Upload ``out_dir`` as the report run's artifacts and close the run."""
    client = MlflowClient(tracking_uri)
    if ok:
        client.log_artifacts(run_id, str(out_dir))
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


@dataclass
class ReportResult:
    """What :func:`make_report` produced, with per-stage seconds."""

    paths: dict[str, Path]
    analyses: list[EnvAnalysis]
    run_id: str | None
    seconds: dict[str, float]


def make_report(
    query: RunQuery,
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    by: str = "algo",
    seed: int = 0,
    n_permutations: int = stats.N_PERMUTATIONS,
    log: bool = True,
    command: str = "",
    curve_x: str = "episode",
) -> ReportResult:
    """Collect, analyse, render, write and (optionally) log the report; raises CollectionError."""
    out, seconds = Path(out_dir), {}
    t0 = time.perf_counter()
    collection = collect(query, tracking_uri)
    if by not in collection.runs.columns:
        raise CollectionError(f"--by {by!r} is not a run column (try algo, group or param.<key>)")
    seconds["collect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyses = analyse(collection, by, seed=seed, n_permutations=n_permutations, curve_x=curve_x)
    seconds["statistics"] = time.perf_counter() - t0
    run_id = start_report_run(collection, by, query) if log else None
    ok = False
    try:
        t0 = time.perf_counter()
        title = f"Comparison report: {query.experiment or ', '.join(collection.experiment_ids)}"
        sections = build_sections(analyses, collection, query, command=command, report_run_id=run_id)
        seconds["plots"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        paths = write(out, title, sections, analyses, collection)
        seconds["write"] = time.perf_counter() - t0
        ok = True
    finally:
        if run_id is not None:
            t0 = time.perf_counter()
            finish_report_run(collection.tracking_uri, run_id, out, ok)
            seconds["log to MLflow"] = time.perf_counter() - t0
    return ReportResult(paths, analyses, run_id, seconds)


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--tag {text!r} must look like key=value")
    return key, value


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog=command_name("analysis.report", "rlexp-report"), description=__doc__.split("\n")[0])
    p.add_argument("--experiment", help="MLflow experiment name (default: that of --run-ids)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--algo", nargs="+", default=[], help="only these algos")
    p.add_argument("--env", nargs="+", default=[], help="only these gymnasium ids")
    p.add_argument("--group", nargs="+", default=[], help="only these multirun groups")
    p.add_argument("--sweep", nargs="+", default=[], help="only these Optuna studies")
    p.add_argument("--tag", nargs="+", type=_tag, default=[], metavar="K=V", help="tag equalities")
    p.add_argument("--run-ids", nargs="+", default=[], help="only these runs")
    p.add_argument("--exclude-run-ids", nargs="+", default=[], help="leave these runs out")
    p.add_argument(
        "--status",
        nargs="+",
        default=["FINISHED", "FAILED", "KILLED"],
        help="run statuses to include (FAILED/KILLED count as unsolved where they stopped)",
    )
    p.add_argument("--by", default="algo", help="column defining the compared arms (default algo)")
    p.add_argument("--out", help="output directory (default reports/<experiment>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations and bootstraps")
    p.add_argument("--permutations", type=int, default=stats.N_PERMUTATIONS, help="Monte Carlo permutations")
    p.add_argument(
        "--x",
        choices=["episode", "env_step"],
        default="episode",
        help="the learning curves' x axis: episodes (default) or env steps",
    )
    p.add_argument("--no-log", action="store_true", help="do not log the report run to MLflow")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    from rlexp.completion import argparse_candidates, handle

    if handle(sys.argv[1:] if argv is None else argv, argparse_candidates(parser())):
        return 0
    args = parser().parse_args(argv)
    if not args.experiment and not args.run_ids:
        parser().error("give --experiment or --run-ids")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    query = RunQuery(
        experiment=args.experiment,
        algos=args.algo,
        envs=args.env,
        groups=args.group,
        sweeps=args.sweep,
        tags=dict(args.tag),
        run_ids=args.run_ids,
        statuses=tuple(args.status),
        exclude_run_ids=args.exclude_run_ids,
    )
    out = Path(args.out or Path("reports") / slug(args.experiment or "runs"))
    command = command_name("analysis.report", "rlexp-report") + " " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        result = make_report(
            query,
            out,
            tracking_uri=args.tracking_uri,
            by=args.by,
            seed=args.seed,
            n_permutations=args.permutations,
            log=not args.no_log,
            command=command,
            curve_x=args.x,
        )
    except CollectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the output folder cannot be written
        print(
            f"error: cannot write the report to {out}: {e.strerror or e}; choose another --out",
            file=sys.stderr,
        )
        return 1
    for a in result.analyses:
        for line in list(a.pairs["verdict"]) + a.notes:
            print(f"{a.env}: {line}")
    print(
        f"report: {result.paths['html']} and {result.paths['markdown']}"
        + (f" (MLflow run {result.run_id})" if result.run_id else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
