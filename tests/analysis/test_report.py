"""The report end to end: CLI, files, the MLflow report run, edge cases, and a real browser render."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.collect import RunQuery, collect
from analysis.report import main, median_text
from analysis.testing import fill_store, log_contract_run

from .conftest import new_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MIDPOINTS = {"ppo": 10.0, "dqn": 25.0, "random": 400.0}  # random never solves within 150 episodes


@pytest.fixture(scope="module")
def report(empty_db, tmp_path_factory) -> tuple[str, Path, str]:
    """One report over 3 algos x 5 seeds; returns (store URI, output dir, stdout)."""
    uri = new_store(empty_db, tmp_path_factory.mktemp("report-store"))
    fill_store(
        uri,
        "CartPole-v1",
        MIDPOINTS,
        seeds=range(5),
        max_episodes=150,
        params={"dqn": {"optimizer.lr": 3e-4}},
    )
    client = MlflowClient(uri)
    log_contract_run(
        client,
        client.get_experiment_by_name("CartPole-v1").experiment_id,
        algo="ppo",
        env="CartPole-v1",
        seed=5,
        returns=[10.0] * 3,
        status="FAILED",
        max_episodes=150,
    )
    out = tmp_path_factory.mktemp("report-out")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(
            [
                "--experiment",
                "CartPole-v1",
                "--tracking-uri",
                uri,
                "--out",
                str(out),
                "--permutations",
                "1000",
            ]
        )
    assert code == 0
    return uri, out, buf.getvalue()


def test_report_writes_pages_tables_and_figures(report):
    _, out, stdout = report
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "report.md", "runs.csv", "episodes.csv", "summary.csv", "pairwise.csv"} <= names
    assert {
        "CartPole-v1-solve-curves.png",
        "CartPole-v1-learning-curves.png",
        "CartPole-v1-episodes-to-solve.png",
        "CartPole-v1-p-improvement.png",
    } <= names
    svgs = sorted(n for n in names if n.endswith(".svg"))  # every figure also as SVG
    assert svgs == sorted(n.replace(".png", ".svg") for n in names if n.endswith(".png"))
    assert (out / svgs[0]).read_text().lstrip().startswith("<?xml") and "<svg" in (out / svgs[0]).read_text()
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 4
    assert "http://" not in page and "https://" not in page  # self-contained
    md = (out / "report.md").read_text()
    assert "![CartPole-v1-solve-curves](CartPole-v1-solve-curves.png)" in md
    assert re.search(
        r"ppo solves in fewer episodes than random: P\(ppo faster\) = 0\.92 \[0\.\d\d, 0\.99\], "  # 1 FAILED
        r"Gehan permutation p = [0-9.e-]+ \(Holm\), both censored at episode 150",
        md,
    )
    assert "random never solved (up to 150 episodes)" in md and "≥ 150.0" in md  # a lower bound
    assert "> 150 (fewer than half solved)" in md  # random's median: no number
    assert "| optimizer.lr | 0.0003 | 0.001 | 0.001 |" in md  # config differences, arms sorted
    assert "scipy 1.17" in md and "Excluded by status" not in md
    assert "FAILED (censored where it stopped)" in md and "ppo has 1 FAILED/KILLED run(s)" in md
    assert "ppo solves in fewer episodes than random" in stdout
    assert "[1.00, 1.00]" not in md  # never a point interval
    assert "Gehan's generalised Wilcoxon" in md and "common footing" in md.lower()
    assert "final return [95% CI]" in md and "inf" not in md.replace("information", "")


def test_report_run_is_logged_tagged_and_skipped_by_collection(report):
    uri, _, stdout = report
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("CartPole-v1")
    reports = client.search_runs([exp.experiment_id], "tags.report = '1'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    assert reports[0].info.run_id in stdout
    arts = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert {"report.html", "report.md", "runs.csv", "episodes.csv"} <= arts
    assert len(collect(RunQuery(experiment="CartPole-v1"), uri, with_episodes=False).runs) == 16


def test_arms_can_be_any_run_column(report, tmp_path):
    uri, _, _ = report
    assert (
        main(
            [
                "--experiment",
                "CartPole-v1",
                "--tracking-uri",
                uri,
                "--by",
                "param.optimizer.lr",
                "--algo",
                "ppo",
                "dqn",
                "--out",
                str(tmp_path),
                "--no-log",
                "--permutations",
                "200",
            ]
        )
        == 0
    )
    md = (tmp_path / "report.md").read_text()
    assert "0.001 solves in fewer episodes than 0.0003" in md
    assert (
        main(
            [
                "--experiment",
                "CartPole-v1",
                "--tracking-uri",
                uri,
                "--by",
                "nope",
                "--no-log",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )


def test_one_algorithm_one_seed_says_what_cannot_be_concluded(store, tmp_path, capsys):
    fill_store(store, "Solo", {"ppo": 35.0}, seeds=[0], max_episodes=150, episode_metrics=False)
    assert main(["--experiment", "Solo", "--out", str(tmp_path / "r"), "--no-log"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Only one algo (ppo) matched: there is nothing to compare" in md
    assert "ppo has a single run: no confidence interval" in md
    assert "p-improvement" not in md and "[n/a" not in md


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--experiment", "Nope"], "error: experiment 'Nope' not found at tracking URI sqlite:///"),
        (["--experiment", "Solo", "--algo", "sac"], "error: no runs match experiment='Solo'; algos=sac"),
    ],
)
def test_missing_experiment_or_runs_is_a_one_line_error(store, tmp_path, capsys, argv, message):
    fill_store(store, "Solo", {"ppo": 35.0}, seeds=[0], max_episodes=120, episode_metrics=False)
    assert main([*argv, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and not (tmp_path / "r").exists()


def _error(argv: list[str], capsys) -> str:
    assert main([*argv, "--no-log"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in captured.err
    return err


def test_corrupt_or_empty_store_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not an sqlite database" * 100)
    err = _error(
        ["--experiment", "E", "--tracking-uri", f"sqlite:///{bad}", "--out", str(tmp_path / "r")], capsys
    )
    assert "cannot read the MLflow store" in err and "restore" in err
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    err = _error(
        ["--experiment", "E", "--tracking-uri", f"sqlite:///{empty}", "--out", str(tmp_path / "r")], capsys
    )
    assert "is empty (0 bytes)" in err and empty.stat().st_size == 0  # not turned into a store


def test_empty_arm_and_finished_run_without_episodes_are_one_line_errors(store, tmp_path, capsys):
    fill_store(store, "Solo", {"ppo": 35.0}, seeds=[0, 1], max_episodes=120, episode_metrics=False)
    err = _error(["--experiment", "Solo", "--algo", "ppo", "dqn", "--out", str(tmp_path / "r")], capsys)
    assert "no runs of algo 'dqn'" in err and "found: ppo" in err
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("Solo").experiment_id
    rid = client.create_run(exp, tags={"algo": "ppo", "env": "CartPole-v1", "seed": "7"}).info.run_id
    client.set_terminated(rid, "FINISHED")  # no metrics, no episodes.csv
    err = _error(["--experiment", "Solo", "--out", str(tmp_path / "r")], capsys)
    assert f"run {rid} (ppo, seed 7) is FINISHED but recorded no episodes" in err
    assert f"--exclude-run-ids {rid}" in err
    out = tmp_path / "ok"
    assert main(["--experiment", "Solo", "--exclude-run-ids", rid, "--out", str(out), "--no-log"]) == 0


def test_over_long_names_make_short_file_names(store, tmp_path, capsys):
    env = "Very-" + "Long" * 80 + "-v1"
    fill_store(store, "X" * 300, {"ppo": 35.0, "dqn": 40.0}, seeds=[0, 1], max_episodes=120, env=env)
    monkey_cwd = tmp_path / "cwd"
    monkey_cwd.mkdir()
    import os

    old = os.getcwd()
    os.chdir(monkey_cwd)
    try:
        assert main(["--experiment", "X" * 300, "--no-log", "--permutations", "200"]) == 0
    finally:
        os.chdir(old)
    (report_dir,) = (monkey_cwd / "reports").iterdir()
    assert len(report_dir.name) <= 60
    assert all(len(p.name) < 100 for p in report_dir.iterdir())


def test_learning_curves_against_env_steps(report, tmp_path):
    uri, _, _ = report
    with redirect_stdout(io.StringIO()):
        code = main(["--experiment", "CartPole-v1", "--tracking-uri", uri, "--out", str(tmp_path), "--no-log",
                     "--permutations", "200", "--x", "env_step"])
    assert code == 0
    md = (tmp_path / "report.md").read_text()
    assert "Mean episode return across runs against env steps" in md and "percentile-bootstrap" in md
    assert (tmp_path / "CartPole-v1-learning-curves.svg").read_text().count("env steps") >= 1


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PROBE = (  # after load: every image's decoded width and box on the page, and the page's height
    "<script>window.addEventListener('load', () => { const b = document.body; "
    "b.setAttribute('data-images', [...document.images].map(i => { const r = i.getBoundingClientRect(); "
    "return [i.naturalWidth, r.left, r.top + scrollY, r.width, r.height].map(Math.round).join(' '); }).join(';')); "
    "b.setAttribute('data-height', Math.ceil(document.documentElement.scrollHeight)); });</script>"
)


class _Tables(HTMLParser):
    """The text of every table cell of a page, table by table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; CI has it)")
def test_html_renders_its_figures_and_tables_in_headless_chromium(report, tmp_path):
    """The page as a browser draws it: every figure decodes and is drawn (the screenshot is not blank
    where the figures are, and is blank in the margin beside them), and the tables the browser
    holds carry the numbers of summary.csv."""
    from PIL import Image

    _, out, _ = report
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    found = re.search(r'data-images="([0-9 ;-]*)"', dom)
    assert found, "the probe script did not run"
    height = int(re.search(r'data-height="(\d+)"', dom).group(1))
    images = [[int(v) for v in box.split()] for box in found.group(1).split(";")]
    assert len(images) == 4 and all(width > 0 for width, *_ in images)  # every figure decoded
    assert "<h1>Comparison report: CartPole-v1</h1>" in dom

    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size=1200,{height}", (out / "report.html").as_uri())
    pixels = Image.open(shot).convert("L")
    assert pixels.size[0] == 1200 and pixels.size[1] >= images[-1][2] + images[-1][4]
    for _, left, top, width, height in images:
        assert width > 300 and height > 150
        box = np.asarray(pixels.crop((left, top, left + width, top + height)), dtype=float)
        inked = (box < 200).mean()  # lines, bars, text: dark pixels
        assert 0.01 < inked < 0.6 and box.std() > 20, (left, top, inked, box.std())
    margin = np.asarray(pixels.crop((1200 - 40, images[0][2], 1200, images[0][2] + 100)), dtype=float)
    assert margin.min() > 240  # a blank region is told apart from a figure

    tables = _Tables()
    tables.feed(dom)
    summary_rows = next(t for t in tables.tables if t[0][:3] == ["rank", "algo", "runs"])
    header, rows = summary_rows[0], {r[1]: dict(zip(summary_rows[0], r, strict=True)) for r in summary_rows[1:]}
    expected = pd.read_csv(out / "summary.csv")
    assert set(rows) == set(expected["algo"]) == {"ppo", "dqn", "random"}
    for r in expected.to_dict("records"):
        row = rows[r["algo"]]
        assert (row["runs"], row["solved"], row["FAILED/KILLED"]) == (
            str(r["runs"]), f"{r['solved']}/{r['runs']}", str(r["failed"]))
        assert row["median episodes [95% CI]"] == median_text(r)
    assert [rows[a]["runs"] for a in ("ppo", "dqn", "random")] == ["6", "5", "5"]  # ppo: 5 + 1 FAILED
    assert "median episodes [95% CI]" in header


def test_launch_warns_when_no_run_can_solve():
    from rlexp.compose import budget_warnings, compose_config

    short = compose_config(["train.max_episodes=50", "solve.window=100"])
    assert budget_warnings([short, short]) == [
        "train.max_episodes=50 < solve.window=100: no run can solve (a solve needs 100 episodes)"
    ]
    assert budget_warnings([compose_config(["train.max_episodes=100", "solve.window=100"])]) == []
