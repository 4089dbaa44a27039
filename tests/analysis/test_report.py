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


def test_launch_warns_when_no_run_can_solve():
    from rlexp.compose import budget_warnings, compose_config

    short = compose_config(["train.max_episodes=50", "solve.window=100"])
    assert budget_warnings([short, short]) == [
        "train.max_episodes=50 < solve.window=100: no run can solve (a solve needs 100 episodes)"
    ]
    assert budget_warnings([compose_config(["train.max_episodes=100", "solve.window=100"])]) == []
