"""Fixtures for the analysis tests: private MLflow stores and tidy run tables built by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite database; copying it skips the slow schema migrations."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def new_store(empty_db: Path, directory: Path) -> str:
    """A fresh store in ``directory`` (a copy of the empty database); returns its URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_db, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture
def store(empty_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store in tmp_path, also set as MLFLOW_TRACKING_URI."""
    uri = new_store(empty_db, tmp_path / "store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def runs_frame(arms: dict[str, list[int | None]], budget: int = 100) -> pd.DataFrame:
    """Tidy run table: ``arms`` maps an algo to solve episodes per seed (None: unsolved at ``budget``)."""
    rows = []
    for algo, times in arms.items():
        for seed, t in enumerate(times):
            rows.append(
                {
                    "run_id": f"{algo}-{seed}",
                    "algo": algo,
                    "env": "E",
                    "seed": seed,
                    "solved": t is not None,
                    "episodes_to_solve": np.nan if t is None else float(t),
                    "episodes": float(budget if t is None else t),
                    "wall_time_s": 1.0,
                    "sps": 100.0,
                }
            )
    return pd.DataFrame(rows)
