"""Fixtures for the analysis tests: a private MLflow store and tidy run tables built by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store in tmp_path, also set as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def runs_frame(arms: dict[str, list[int | None]], budget: int = 100) -> pd.DataFrame:
    """Tidy run table: ``arms`` maps an algo to solve episodes per seed (None: unsolved at ``budget``)."""
    rows = []
    for algo, times in arms.items():
        for seed, t in enumerate(times):
            rows.append({"run_id": f"{algo}-{seed}", "algo": algo, "env": "E", "seed": seed,
                         "solved": t is not None, "episodes_to_solve": np.nan if t is None else float(t),
                         "episodes": float(budget if t is None else t), "wall_time_s": 1.0, "sps": 100.0})
    return pd.DataFrame(rows)
