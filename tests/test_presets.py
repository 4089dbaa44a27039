"""conf/algo/ holds algorithms, conf/experiment/ the presets: every preset composes and validates,
and an old preset name given as an algorithm is refused with a one-line hint."""

from __future__ import annotations

import subprocess

import pytest

from rlexp.algos.registry import check_compatible
from rlexp.compose import compose_config, group_options
from rlexp.config import ConfigError

from .conftest import PYTHON, ROOT, cli_env

PRESETS = group_options("experiment")
SEED_PRESETS = ["dqn_seed", "dqn_target_seed", "double_dqn_seed", "clipped_double_dqn_seed", "dueling_dqn_seed",
                "reinforce_seed", "reinforce_baseline_seed", "actor_critic_seed", "ppo_seed"]


def test_the_presets_are_experiments():
    assert {*SEED_PRESETS, "clipped_double_dqn_steady"} <= set(PRESETS)


@pytest.mark.parametrize("algo", group_options("algo"))
def test_every_algo_option_is_an_algorithm(algo):
    """An algo/ option is an algorithm: its file name is its registry name (no presets in algo/)."""
    assert compose_config([f"algo={algo}"]).algo.name == algo


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    cfg = compose_config([f"+experiment={preset}"])
    check_compatible(cfg)
    for line in (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines():
        if line.startswith("  - override /algo: "):  # the algorithm the preset picks
            assert cfg.algo.name == line.split(": ", 1)[1].strip()


@pytest.mark.parametrize("preset", SEED_PRESETS)
def test_a_seed_preset_differs_from_its_algorithm_and_yields_to_the_command_line(preset):
    cfg = compose_config([f"+experiment={preset}"])
    assert cfg.algo != compose_config([f"algo={cfg.algo.name}"]).algo
    again = compose_config([f"+experiment={preset}", "algo.lr=0.0123", "seed=4"])
    assert (again.algo.lr, again.optimizer.lr, again.seed) == (0.0123, 0.0123, 4)


def test_dqn_seed_values():
    """The preset sets the seed page's values and resets what the dqn default adds (LayerNorm)."""
    a = compose_config(["+experiment=dqn_seed"]).algo
    assert (a.name, a.hidden, a.layer_norm, a.gamma, a.buffer_size, a.target_alpha, a.terminal_reward) == \
        ("dqn", [256, 64], False, 0.95, 2000, 0.3, -1.0)
    assert (a.exploration.schedule, a.exploration.factor, a.exploration.end) == ("multiplicative", 0.999, 0.005)


@pytest.mark.parametrize("preset", ["dqn_seed", "clipped_double_dqn_steady"])
def test_an_old_algo_name_is_refused_with_a_hint(preset):
    with pytest.raises(ConfigError) as e:
        compose_config([f"algo={preset}"])
    assert str(e.value) == f"algo={preset!r} is now a preset: use +experiment={preset}"


def test_the_cli_refuses_an_old_algo_name_in_one_line():
    p = subprocess.run([PYTHON, "-m", "rlexp", "algo=ppo_seed", "seed=1,2", "-m"], cwd=ROOT, env=cli_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "rlexp: error: algo='ppo_seed' is now a preset: use +experiment=ppo_seed"


def test_the_readme_configuration_table_names_every_algorithm_and_preset():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Configuration"):text.index("### What each run records")]
    missing = [n for n in [*group_options("algo"), *SEED_PRESETS, "clipped_double_dqn_steady"] if f"`{n}`" not in table]
    assert not missing, f"README's configuration table does not name {missing}"
