"""A trained agent back in Python: :func:`load_policy` and the MLflow pyfunc model of a run.

A run logs its member's weights and config as an MLflow model (``model/`` in its artifacts, the
pyfunc flavour with this module as loader): ``model/data/policy/model.pt`` (each network's
state, the member axis dropped) and ``model/data/policy/config.yaml``. :class:`Policy` rebuilds the
algorithm's agent for one member from the config, loads the weights and acts greedily (the argmax
action, or the deterministic one: DDPG's ``mu(s)``, SB3's ``deterministic=True``), numpy in and out.
``mlflow.pyfunc.load_model("runs:/<id>/model")`` gives the same policy behind ``predict``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlexp.algos.registry import get_algorithm
from rlexp.config import Config, ConfigError
from rlexp.envs import describe
from rlexp.nets import member_state

MODEL_DIR = "model"  # the run's MLflow model, under its artifacts
DATA_DIR = "policy"  # inside the model: data/policy/{model.pt, config.yaml}

State = Mapping[str, Mapping[str, torch.Tensor]]  # network name -> its (one member's) state dict


class Policy:
    """One member's trained agent, acting greedily.

    ``act(obs)``: an observation ``(obs_dim,)`` gives one action (an int64 scalar, or ``(act_dim,)``
    float32 for continuous actions); a batch ``(B, obs_dim)`` gives ``(B,)`` or ``(B, act_dim)``.
    """

    def __init__(self, cfg: Config, state: State) -> None:
        self.config = cfg
        self.env_id = cfg.env.id
        self.spec = describe(cfg.env)
        algo = get_algorithm(cfg.algo.name)
        self.agent = algo.build(cfg, self.spec, [cfg.seed], torch.device("cpu"))
        if algo.loop == "external":  # SB3: the model exists once built for an env
            self.agent.make_model(cfg, 1)
        load_member(self.agent, state)

    def act(self, obs: Any) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.spec.obs_dim:
            raise ValueError(f"obs of shape {x.shape}: {self.env_id} observations are ({self.spec.obs_dim},), "
                             f"a batch ({'B'}, {self.spec.obs_dim})")
        actions = np.asarray(self.agent.greedy(x.reshape(1, -1, self.spec.obs_dim))[0])
        return actions if x.ndim == 2 else actions[0]

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """The pyfunc entry point: a batch of observations (array or DataFrame) -> their actions."""
        return self.act(np.atleast_2d(np.asarray(model_input, dtype=np.float32)))


def load_member(agent: Any, state: State) -> None:
    """Load one member's saved state into a one-member agent (stacked tensors get their axis back)."""
    modules = dict(agent.modules())
    if set(modules) != set(state):
        raise ConfigError(f"the saved model holds {sorted(state)}, the agent {sorted(modules)}")
    for name, module in modules.items():
        own = module.state_dict()
        module.load_state_dict({key: t.unsqueeze(0) if own[key].dim() == t.dim() + 1 else t
                                for key, t in state[name].items()})


def agent_state(agent: Any, k: int, size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Member ``k``'s networks as saved in ``model.pt``."""
    return {name: member_state(m, k, size) for name, m in agent.modules()}


def save_model(path: Path, state: State, config: Mapping[str, Any], spec_obs_dim: int, discrete: bool,
               act_dim: int) -> Path:
    """Write one member's MLflow pyfunc model to the directory ``path`` (which must not exist)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with tempfile.TemporaryDirectory(prefix="rlexp-model-") as tmp:
        data = Path(tmp) / DATA_DIR
        data.mkdir()
        torch.save(dict(state), data / "model.pt")
        (data / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        out = TensorSpec(np.dtype(np.int64), (-1,)) if discrete else TensorSpec(np.dtype(np.float32), (-1, act_dim))
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec_obs_dim))]),
                                   outputs=Schema([out]))
        with warnings.catch_warnings():  # an input example would only repeat the signature's shapes
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            mlflow.pyfunc.save_model(str(path), loader_module=__name__, data_path=str(data), signature=signature,
                                     pip_requirements=_requirements())
    return path


def _requirements() -> list[str]:
    """What loading the model needs besides rlexp itself (not on PyPI: install it from its checkout)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "numpy", "gymnasium", "mlflow", "PyYAML")]


def from_folder(folder: Path) -> Policy:
    """The policy saved in ``folder`` (``model.pt`` and ``config.yaml``)."""
    from rlexp.compose import config_from_dict

    cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    return Policy(cfg, torch.load(folder / "model.pt", map_location="cpu"))


def _load_pyfunc(data_path: str, model_config: Any = None) -> Policy:
    """MLflow's loader-module hook: ``data_path`` is the model's ``data/policy`` folder."""
    return from_folder(Path(data_path))


def load_policy(source: str) -> Policy:
    """A trained policy from an MLflow run id, or any MLflow model URI (``models:/name/1``,
    ``runs:/<id>/model``), on the tracking URI in force (``MLFLOW_TRACKING_URI``)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from rlexp.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    uri = source if ":/" in source else f"runs:/{source}/{MODEL_DIR}"
    with tempfile.TemporaryDirectory(prefix="rlexp-policy-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as e:
            raise ConfigError(f"run={source!r}: no model found there ({str(e).splitlines()[0]})") from None
        if (local / "data" / DATA_DIR).is_dir():
            return from_folder(local / "data" / DATA_DIR)
        if (local / "model.pt").is_file() and ":/" not in source:  # a run logged before the pyfunc model
            mlflow.artifacts.download_artifacts(run_id=source, artifact_path="config.yaml", dst_path=str(local))
            return from_folder(local)
        raise ConfigError(f"run={source!r}: {uri} is not an rlexp model (no data/{DATA_DIR} folder)")



def log_model(tracker: Any, state: State, cfg: Config) -> None:
    """Log one member's pyfunc model (weights, config, signature) as the run's ``model/`` artifact."""
    spec = describe(cfg.env)
    with tempfile.TemporaryDirectory(prefix="rlexp-model-") as tmp:
        tracker.log_artifact(save_model(Path(tmp) / MODEL_DIR, state, dataclasses.asdict(cfg), spec.obs_dim,
                                        spec.discrete, spec.n_actions))
