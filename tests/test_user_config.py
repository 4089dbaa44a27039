"""A user's own config folders (``--config-dir``, ``hydra.searchpath``) and envs (``module:EnvId``):
checked by the same schemas as the shipped configs; the README's recipe runs as written."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from rlexp.compose import compose_config, expand_sweep, preflight
from rlexp.config import ConfigError

from .test_readme import run_rlexp

ROOT = Path(__file__).resolve().parent.parent
SECTION = "### Your own configs and environments"


def recipe() -> tuple[dict[str, str], list[list[str]]]:
    """The README section's files (a `` `path` `` line, then its code block) and ``rlexp`` commands."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n### ", start + len(SECTION))]
    files = dict(re.findall(r"^`([\w./]+)`\n```\w*\n(.*?)```", section, flags=re.M | re.S))
    commands = [shlex.split(line)[1:] for line in re.findall(r"^rlexp .*$", section, flags=re.M)]
    return files, commands


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module's runs (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('user_config') / 'mlflow.db'}"


@pytest.fixture
def user_dir(tmp_path, monkeypatch, store):
    """The README's files in a fresh working directory, the module's MLflow store."""
    files, _ = recipe()
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])  # what the CLI adds for the working directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("RLEXP_TRACKING_FLUSH_S", "0")
    return tmp_path


def test_the_recipe_is_found():
    files, commands = recipe()
    assert {"my_envs.py", "myconf/algo/small_dqn.yaml", "myconf/env/short_cartpole.yaml",
            "myconf/experiment/quick.yaml"} <= set(files)
    assert len(commands) == 3 and any("--config-dir" in c for c in commands)
    assert any(a.startswith("hydra.searchpath=") for c in commands for a in c)


@pytest.mark.parametrize("index", range(3))
def test_the_readme_recipe_runs(user_dir, monkeypatch, capfd, index):
    args = [a for a in recipe()[1][index] if not a.startswith("train.max_episodes=")]
    code = run_rlexp([*args, "train.max_episodes=2", "train.save_model=false"], monkeypatch)
    err = capfd.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    runs = re.findall(r"rlexp: (\w+) seed=\d+: not solved \(2 episodes", err)
    assert runs and set(runs) <= {"small_dqn", "quick"}, err


def _searchpath(d: Path) -> str:
    return f"hydra.searchpath=[file://{d}]"


def test_user_files_compose_with_the_same_schema(user_dir):
    sp = _searchpath(user_dir / "myconf")
    cfg = compose_config([sp, "algo=small_dqn", "env=short_cartpole"])
    assert cfg.algo.name == "double_dqn" and cfg.algo.hidden == [64, 64]  # the rest: double_dqn's
    assert cfg.algo.lr == compose_config(["algo=double_dqn"]).algo.lr
    assert cfg.env.id == "my_envs:ShortCartPole-v0"
    preset = compose_config([sp, "+experiment=quick", "seed=4"])
    assert (preset.algo.hidden, preset.env.id, preset.train.max_episodes, preset.seed) == \
        ([64, 64], "my_envs:ShortCartPole-v0", 300, 4)
    # every job of a multirun keeps the search path
    assert all(sp in job for job in expand_sweep([sp, "algo=small_dqn", "seed=1,2"]))
    assert len(preflight([sp, "algo=small_dqn", "env=short_cartpole", "seed=1,2"])) == 2


@pytest.mark.parametrize(("body", "message"), [
    ("defaults: [double_dqn, _self_]\nhiden: [8]\n", "Key 'hiden' not in 'DQNConfig'"),
    ("defaults: [double_dqn, _self_]\nlr: -1.0\n", "algo.lr=-1.0 must be > 0"),
    ("name: dqn\nhidden: [8]\n", "algo.name='dqn': its algo/ file extends no algorithm schema"),
])
def test_a_bad_user_file_is_refused_in_one_line(user_dir, body, message):
    (user_dir / "myconf" / "algo" / "bad.yaml").write_text(body)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        compose_config([_searchpath(user_dir / "myconf"), "algo=bad"])
    assert "\n" not in str(e.value)


def test_user_options_need_their_folder(user_dir):
    with pytest.raises(ConfigError, match=r"algo='small_dqn' is not an option of algo/"):
        compose_config(["algo=small_dqn"])
    with pytest.raises(ConfigError, match=r"hydra.searchpath: 'file://nope' is not a folder"):
        compose_config(["hydra.searchpath=[file://nope]"])


def test_the_cli_turns_config_dir_into_the_search_path(tmp_path, monkeypatch):
    from rlexp.cli import _overrides

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    here = tmp_path
    assert _overrides(["--config-dir", "a", "algo=x", "-m"]) == ["algo=x", f"hydra.searchpath=['file://{here / 'a'}']"]
    assert _overrides(["hydra.searchpath=[file:///b]", "-cd=a", "seed=1"]) == \
        ["seed=1", f"hydra.searchpath=['file://{here / 'a'}','file:///b']"]
    assert _overrides(["hydra.searchpath=[file:///b]", "seed=1"]) == ["seed=1", "hydra.searchpath=[file:///b]"]
    with pytest.raises(ConfigError, match=r"--config-dir 'nope': no such folder"):
        _overrides(["--config-dir", "nope"])


def test_a_module_env_id_imports_its_module_or_says_why(user_dir):
    from rlexp.envs import describe, registered_threshold

    assert registered_threshold("my_envs:ShortCartPole-v0") == 195.0
    assert describe(compose_config(["env.id=my_envs:ShortCartPole-v0"]).env).n_actions == 2
    with pytest.raises(ConfigError, match=r"env.id='no_such_module:X-v0': importing 'no_such_module' failed"):
        registered_threshold("no_such_module:X-v0")
