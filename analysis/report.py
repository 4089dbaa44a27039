"""Comparison report: HTML (self-contained) and Markdown pages from MLflow runs, logged back to MLflow.

    python -m analysis.report --experiment CartPole-v1 [--tracking-uri URI] [--algo a b] [--env ..]
        [--group ..] [--sweep ..] [--tag k=v ..] [--run-ids ..] [--by algo] [--out DIR] [--no-log]

Writes ``report.html``, ``report.md``, the figures as PNG, ``runs.csv``, ``episodes.csv``,
``summary.csv`` and ``pairwise.csv`` into ``--out`` and logs them as artifacts of a report run
(tagged ``report=1``) in the same experiment. Exits 1 with a one-line error when the experiment
does not exist or no run matches.
"""

from __future__ import annotations

import argparse
import base64
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
from mlflow.tracking import MlflowClient

from analysis import plots, stats
from analysis.collect import Collection, CollectionError, RunQuery, collect, param_differences

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
                "intervals are wide and comparisons involving it are weak."
            )
        if r["solved"] == 0:
            notes.append(
                f"{arm} never solved (up to {r['max_episodes']:.0f} episodes): its "
                "episodes-to-solve is only known to exceed its episode counts."
            )
    if len(pairs) and not pairs["verdict"].str.contains("solves in fewer").any():
        notes.append(
            f"No pair differs clearly (Holm-adjusted log-rank p < {stats.ALPHA} and a "
            "P(improvement) CI excluding 0.5)."
        )
    return notes


def analyse(
    collection: Collection, by: str = "algo", *, seed: int = 0, n_resamples: int = stats.N_RESAMPLES
) -> list[EnvAnalysis]:
    """Statistics for each environment in the collection (arms compared within an env only)."""
    runs = collection.runs.assign(**{by: collection.runs[by].astype(str)})
    episodes = collection.episodes
    if by not in episodes.columns:
        episodes = episodes.merge(runs[["run_id", by]], on="run_id")
    out = []
    for env, g in runs.groupby("env", sort=True):
        summary = stats.summarize(g, by, n_resamples=n_resamples, seed=seed)
        pairs = stats.compare(g, by, n_resamples=n_resamples, seed=seed)
        ep = episodes[episodes["run_id"].isin(g["run_id"])].assign(**{by: lambda d: d[by].astype(str)})
        out.append(
            EnvAnalysis(
                env=str(env),
                by=by,
                runs=g,
                summary=summary,
                pairs=pairs,
                km=stats.km_curves(g, by),
                curve=stats.learning_curve(ep, by, min_frac=MIN_FRAC),
                threshold=_threshold(g),
                notes=limitations(summary, pairs, by),
            )
        )
    return out


# --------------------------------------------------------------------------- page model
@dataclass
class Fig:
    """A figure of the page: file stem, caption, PNG bytes."""

    name: str
    caption: str
    png: bytes


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
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "not reached" if math.isinf(x) else f"{x:.{digits}f}"


def _ci(est: float, lo: float, hi: float, digits: int = 1, prefix: str = "") -> str:
    interval = f" [{_num(lo, digits)}, {_num(hi, digits)}]" if math.isfinite(lo) or math.isfinite(hi) else ""
    return f"{prefix}{_num(est, digits)}{interval}"


def summary_display(a: EnvAnalysis) -> pd.DataFrame:
    """The per-arm table as strings (≥ marks a lower bound: the arm has unsolved runs)."""
    rows = []
    for r in a.summary.to_dict("records"):
        lb = "≥ " if r["lower_bound"] else ""
        km = (
            f"> {r['max_episodes']:.0f}"
            if math.isinf(r["km_median"])
            else _ci(r["km_median"], r["km_median_lo"], r["km_median_hi"], 0)
        )
        rows.append(
            {
                a.by: r[a.by],
                "runs": r["runs"],
                "seeds": r["seeds"],
                "solved": f"{r['solved']}/{r['runs']}",
                "median episodes [95% CI]": _ci(r["median"], r["median_lo"], r["median_hi"], 1, lb),
                "IQM [95% CI]": _ci(r["iqm"], r["iqm_lo"], r["iqm_hi"], 1, lb),
                "KM median [95% CI]": km,
                "wall time s (median)": _num(r["wall_time_s"]),
                "steps/s (median)": _num(r["sps"], 0),
            }
        )
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
                "P(A faster) [95% CI]": _ci(r["p_a_faster"], r["p_lo"], r["p_hi"], 2),
                "log-rank p (Holm)": p(r["logrank_p_holm"]),
                "Mann-Whitney p (Holm)": p(r["mannwhitney_p_holm"]),
                "paired seeds": r["paired_n"],
                "Wilcoxon p (Holm)": p(r["wilcoxon_p_holm"]),
                "warnings": r["warnings"] or "-",
            }
            for r in a.pairs.to_dict("records")
        ]
    )


def figures(a: EnvAnalysis) -> list[Fig]:
    """The figures of one environment."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", a.env)
    figs = [
        Fig(
            f"{slug}-episodes-to-solve",
            plots.episodes_to_solve_caption(),
            plots.png(plots.episodes_to_solve(a.runs, a.summary, a.by)),
        ),
        Fig(
            f"{slug}-solve-curves",
            plots.solve_curves_caption(),
            plots.png(plots.solve_curves(a.km, a.arms, a.by)),
        ),
    ]
    if not a.curve.empty:
        figs.append(
            Fig(
                f"{slug}-learning-curves",
                plots.learning_curve_caption(a.curve, min_frac=MIN_FRAC),
                plots.png(plots.learning_curves(a.curve, a.arms, a.by, a.threshold)),
            )
        )
    if len(a.arms) > 1:
        figs.append(
            Fig(
                f"{slug}-p-improvement",
                plots.improvement_matrix_caption(),
                plots.png(plots.improvement_matrix(a.pairs, a.arms)),
            )
        )
    return figs


METHODS = [
    "Episodes-to-solve is the first episode at which the mean return of the last `solve.window` "
    "episodes reaches `solve.threshold`. A run that never solved is right-censored at its episode "
    "count: we only know it needs more episodes than it ran.",
    "Median and IQM (interquartile mean, the mean of the middle 50% of runs) count unsolved runs at "
    "their episode count, so for an arm with unsolved runs (marked ≥) they are lower bounds. The "
    "Kaplan-Meier (KM) median handles censoring exactly; 'not reached' / '> N' means fewer than "
    "half the runs solved.",
    f"Confidence intervals: seeded bootstrap ({stats.BOOTSTRAP_METHOD} method, "
    "scipy.stats.bootstrap), resampling runs. The expanded percentile interval is the percentile "
    "interval taken at a higher level for small samples (98.3% at 10 runs, Hesterberg 2015): the "
    "plain percentile, BCa and basic intervals of the median under-cover at 10 seeds "
    "(benchmarks/bench_stats.py). KM bands are pointwise log-log intervals (scipy.stats.ecdf); "
    "the KM median CI inverts that band.",
    "P(A faster) is the probability that a random run of A solves in fewer episodes than a random "
    "run of B: ties count 1/2, a solved run beats a censored run that ran at least as many "
    "episodes, and pairs whose order the censoring hides (two unsolved runs, or an unsolved run "
    "against one that solved later than it stopped) count 1/2.",
    "Tests: log-rank (scipy.stats.logrank, uses censoring), Mann-Whitney U and, where both arms ran "
    "the same seeds, Wilcoxon signed-rank on matched seeds (both on episode counts for unsolved "
    "runs). Each test's p-values are Holm-corrected over all pairs of the environment. A "
    f"difference is claimed only when the Holm log-rank p < {stats.ALPHA} and the P(A faster) "
    f"CI excludes 0.5. Fewer than {stats.MIN_SEEDS} seeds, overlapping median CIs or a P CI "
    "containing 0.5 are flagged as warnings.",
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
        solved=solved,
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
    n_resamples: int = stats.N_RESAMPLES,
    log: bool = True,
    command: str = "",
) -> ReportResult:
    """Collect, analyse, render, write and (optionally) log the report; raises CollectionError."""
    out, seconds = Path(out_dir), {}
    t0 = time.perf_counter()
    collection = collect(query, tracking_uri)
    if by not in collection.runs.columns:
        raise CollectionError(f"--by {by!r} is not a run column (try algo, group or param.<key>)")
    seconds["collect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyses = analyse(collection, by, seed=seed, n_resamples=n_resamples)
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
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n")[0])
    p.add_argument("--experiment", help="MLflow experiment name (default: that of --run-ids)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--algo", nargs="+", default=[], help="only these algos")
    p.add_argument("--env", nargs="+", default=[], help="only these gymnasium ids")
    p.add_argument("--group", nargs="+", default=[], help="only these multirun groups")
    p.add_argument("--sweep", nargs="+", default=[], help="only these Optuna studies")
    p.add_argument("--tag", nargs="+", type=_tag, default=[], metavar="K=V", help="tag equalities")
    p.add_argument("--run-ids", nargs="+", default=[], help="only these runs")
    p.add_argument("--status", nargs="+", default=["FINISHED"], help="run statuses to include")
    p.add_argument("--by", default="algo", help="column defining the compared arms (default algo)")
    p.add_argument("--out", help="output directory (default reports/<experiment>)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--n-resamples", type=int, default=stats.N_RESAMPLES)
    p.add_argument("--no-log", action="store_true", help="do not log the report run to MLflow")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
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
    )
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", args.experiment or "runs")
    out = Path(args.out or Path("reports") / name)
    command = "python -m analysis.report " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        result = make_report(
            query,
            out,
            tracking_uri=args.tracking_uri,
            by=args.by,
            seed=args.seed,
            n_resamples=args.n_resamples,
            log=not args.no_log,
            command=command,
        )
    except CollectionError as e:
        print(f"error: {e}", file=sys.stderr)
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
