"""The report end to end: CLI, files, the MLflow report run, edge cases, and a real browser render."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis.collect import RunQuery, collect
from analysis.report import main
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
    )
    out = tmp_path_factory.mktemp("report-out")
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(
            ["--experiment", "CartPole-v1", "--tracking-uri", uri, "--out", str(out), "--n-resamples", "1000"]
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
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 4
    assert "http://" not in page and "https://" not in page  # self-contained
    md = (out / "report.md").read_text()
    assert "![CartPole-v1-solve-curves](CartPole-v1-solve-curves.png)" in md
    assert re.search(
        r"ppo solves in fewer episodes than random: P = 1\.00 \[1\.00, 1\.00\], "
        r"log-rank p = [0-9.e-]+ \(Holm\)",
        md,
    )
    assert "random never solved (up to 150 episodes)" in md and "≥ 150.0" in md  # a lower bound
    assert "| optimizer.lr | 0.0003 | 0.001 | 0.001 |" in md  # config differences, arms sorted
    assert "scipy 1.17" in md and "Excluded by status: 1 FAILED." in md
    assert "ppo solves in fewer episodes than random" in stdout
    assert "every resample agrees" in md  # P = 1 [1, 1] from 5 runs each is flagged


def test_report_run_is_logged_tagged_and_skipped_by_collection(report):
    uri, _, stdout = report
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("CartPole-v1")
    reports = client.search_runs([exp.experiment_id], "tags.report = '1'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    assert reports[0].info.run_id in stdout
    arts = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert {"report.html", "report.md", "runs.csv", "episodes.csv"} <= arts
    assert len(collect(RunQuery(experiment="CartPole-v1"), uri, with_episodes=False).runs) == 15


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
                "--n-resamples",
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


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_html_renders_with_its_images_in_headless_chromium(report, tmp_path):
    _, out, _ = report
    probe = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute("
        "'data-widths', [...document.images].map(i => i.naturalWidth).join(',')); });</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    widths = re.search(r'data-widths="([0-9,]*)"', dom)
    assert widths, "the probe script did not run"
    assert [int(w) > 0 for w in widths.group(1).split(",")] == [True] * 4
    assert "<h1>Comparison report: CartPole-v1</h1>" in dom
