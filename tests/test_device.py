"""``train.device``: ``auto`` picks what torch sees; the device a run trained on is its tag ``device``."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from rlexp.compose import compose_config
from rlexp.train import resolve_device, run


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"),
                                                        (False, False, "cpu")])
def test_auto_picks_what_exists(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_the_run_is_tagged_with_the_device_it_trained_on(mlflow_uri):
    cfg = compose_config(["algo=dqn", "train.device=auto", "train.max_episodes=2", "algo.hidden=[8]",
                          "train.save_model=false"])
    result = run(cfg)
    tags = MlflowClient(mlflow_uri).get_run(result.run_id).data.tags
    assert tags["device"] == resolve_device("auto").type
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert tags["device"] == "cpu"
