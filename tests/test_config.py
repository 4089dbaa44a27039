"""Every configuration composes; every bad input is refused with a line naming key and value."""

from __future__ import annotations

import re
import subprocess

import pytest

from rlexp.algos.registry import check_compatible, get_algorithm
from rlexp.compose import compose_config, expand_sweep, group_options, preflight
from rlexp.config import ConfigError, DQNConfig
from rlexp.envs import describe

from .conftest import PYTHON, ROOT, cli_env

ALGOS = group_options("algo")
ENVS = group_options("env")


def _kind(env: str) -> str:
    return "discrete" if describe(compose_config([f"env={env}"]).env).discrete else "continuous"


def test_groups_have_the_public_options():
    assert {"cartpole", "acrobot", "mountaincar", "pendulum"} <= set(ENVS)
    assert {"adam", "rmsprop", "sgd"} <= set(group_options("optimizer"))
    assert {"dqn", "dqn_target", "double_dqn", "clipped_double_dqn", "dueling_dqn"} <= set(ALGOS)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("env", ENVS)
def test_every_algo_env_pair_composes_or_is_refused(algo, env):
    cfg = compose_config([f"algo={algo}", f"env={env}"])
    supported = _kind(env) in get_algorithm(cfg.algo.name).action_spaces
    if supported:
        spec = check_compatible(cfg)
        assert spec.id == cfg.env.id
    else:
        with pytest.raises(ConfigError, match=rf"algo='{cfg.algo.name}' cannot act in env="):
            check_compatible(cfg)


@pytest.mark.parametrize("opt", ["adam", "rmsprop", "sgd"])
def test_optimizers_compose_and_lr_defaults_to_the_algorithm(opt):
    cfg = compose_config([f"optimizer={opt}", "algo=dqn_target"])
    assert cfg.optimizer.name == opt and cfg.optimizer.lr == cfg.algo.lr
    assert compose_config([f"optimizer={opt}", "optimizer.lr=0.02"]).optimizer.lr == 0.02


def test_public_keys():
    cfg = compose_config(["algo=dqn", "env=acrobot", "seed=7", "train.max_episodes=12", "train.max_steps=99",
                          "solve.threshold=-90", "solve.window=10", "tracking.experiment=exp"])
    assert isinstance(cfg.algo, DQNConfig)
    assert (cfg.seed, cfg.train.max_episodes, cfg.train.max_steps) == (7, 12, 99)
    assert (cfg.solve.threshold, cfg.solve.window, cfg.tracking.experiment) == (-90, 10, "exp")
    assert compose_config(["env.id=LunarLander-v3"]).env.id == "LunarLander-v3"


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo=nope"], "algo='nope' is not an option of algo/"),
    (["env=mars"], "env='mars' is not an option of env/"),
    (["optimizer=lion"], "optimizer='lion' is not an option"),
    (["foo=1"], "foo=1: Key 'foo' not in"),
    (["algo.lrr=1"], "algo.lrr=1: Key 'lrr' not in"),
    (["optimizer.lr=abc"], "optimizer.lr=abc: 'abc' of type 'str' could not be converted to Float"),
    (["optimizer.lr=0"], "optimizer.lr=0.0 must be > 0"),
    (["optimizer.lr=-1e-3"], "optimizer.lr=-0.001 must be > 0"),
    (["algo.gamma=0"], "algo.gamma=0.0 must be in (0, 1]"),
    (["algo.gamma=1.01"], "algo.gamma=1.01 must be in (0, 1]"),
    (["algo.batch_size=0"], "algo.batch_size=0 must be >= 1"),
    (["algo.buffer_size=10", "algo.batch_size=32"], "algo.buffer_size=10 must be >= algo.batch_size (32)"),
    (["train.max_episodes=-5"], "train.max_episodes=-5 must be >= 1"),
    (["train.max_steps=0"], "train.max_steps=0 must be >= 1"),
    (["solve.window=0"], "solve.window=0 must be >= 1"),
    (["seed=-1"], "seed=-1 must be >= 0"),
    (["algo.target_update=sometimes"], "algo.target_update='sometimes' must be one of none, hard, soft"),
    (["algo.exploration.end=2"], "algo.exploration.end=2.0 must be in [0, 1]"),
])
def test_bad_input_is_refused_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError) as e:
        preflight(overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_env_id_and_action_space_mismatch():
    with pytest.raises(ConfigError, match="env.id='Nope-v0' is not a registered gymnasium environment"):
        preflight(["env.id=Nope-v0"])
    with pytest.raises(ConfigError, match="algo='dqn' cannot act in env='Pendulum-v1'.*continuous"):
        preflight(["algo=dqn", "env=pendulum"])


def test_sweep_expansion_checks_every_job():
    assert expand_sweep(["seed=1,2", "algo=dqn,dqn_target", "hydra/launcher=joblib"]) == [
        ["seed=1", "algo=dqn"], ["seed=1", "algo=dqn_target"], ["seed=2", "algo=dqn"], ["seed=2", "algo=dqn_target"]]
    with pytest.raises(ConfigError, match="algo='dqn' cannot act in env='Pendulum-v1'"):
        preflight(["env=cartpole,pendulum", "algo=dqn"])


@pytest.mark.parametrize("args", [["algo=nope"], ["optimizer.lr=-1"], ["seed=1,2", "env=pendulum", "-m"]])
def test_cli_refuses_before_any_work(tmp_path, args):
    p = subprocess.run([PYTHON, "-m", "rlexp", *args], cwd=tmp_path, env=cli_env(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlexp: error: "), p.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


def test_conf_dir_is_the_repo_conf():
    assert (ROOT / "conf" / "config.yaml").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("+algo.foo=1", "algo.foo=1 is not a key"),
    ("+train.max_episodez=3", "train.max_episodez=3 is not a key"),
    ("+tracking.nested.key=1", "tracking.nested={'key': 1} is not a key"),
])
def test_an_added_key_the_schema_does_not_declare_is_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config([override])
