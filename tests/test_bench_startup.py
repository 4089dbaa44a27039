"""benchmarks/bench_startup: one repeat of each case, the table and its results file."""

from __future__ import annotations

import pytest

from benchmarks import bench_startup


@pytest.mark.slow
def test_bench_startup_times_each_case_and_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_startup, "RESULTS", tmp_path)
    code = bench_startup.main(["--repeats", "1"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    rows = [line for line in out.splitlines() if line.startswith("| ") and "median" not in line]
    assert len(rows) == len(bench_startup.IMPORTS) + len(bench_startup.CASES)
    assert all(float(line.split("|")[2]) > 0 for line in rows)
    (written,) = tmp_path.glob("startup-*.md")
    text = written.read_text()
    assert "x bare import" in text and "first episode at" in text and "its imports alone" in text
