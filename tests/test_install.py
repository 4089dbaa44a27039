"""rlexp as an installed tool: the wheel ships every module, the default configs and the sweep
definitions; its console scripts run from a folder outside the checkout (``-m slow``: a fresh venv)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import cli_env

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "rlexp", "analysis", "hydra_plugins", "conf", "sweeps")
SCRIPTS = {"rlexp": "rlexp.cli:main", "rlexp-sweep": "rlexp.sweep.__main__:main",
           "rlexp-report": "analysis.report:main", "rlexp-eval": "rlexp.eval:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the checkout as it stands, built from a copy (the checkout gets no build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    return next((tmp / "dist").glob("rlexp-*.whl"))


def _shipped_files() -> set[str]:
    """What the wheel must hold: every module, conf/ as rlexp/conf/, sweeps/ as rlexp/sweeps/."""
    out = {str(p.relative_to(ROOT)) for pkg in ("rlexp", "analysis", "hydra_plugins")
           for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    out |= {f"rlexp/{p.relative_to(ROOT)}" for d in ("conf", "sweeps") for p in (ROOT / d).rglob("*.yaml")}
    return out


def test_the_wheel_ships_every_module_config_and_sweep(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert _shipped_files() - names == set()
    assert {"rlexp/conf/config.yaml", "rlexp/conf/algo/double_dqn.yaml", "rlexp/sweeps/dqn_cartpole.yaml"} <= names
    assert not {n for n in names if n.startswith(("conf/", "sweeps/", "tests/", "benchmarks/"))}
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points


def test_a_command_names_itself(monkeypatch):
    from rlexp import command_name

    monkeypatch.setattr(sys, "argv", ["/venv/bin/rlexp-report", "--help"])
    assert command_name("analysis.report", "rlexp-report") == "rlexp-report"
    monkeypatch.setattr(sys, "argv", ["/x/analysis/report.py", "--help"])
    assert command_name("analysis.report", "rlexp-report") == "python -m analysis.report"


def test_a_sweep_preset_goes_to_the_working_directory(tmp_path, monkeypatch):
    from rlexp.compose import CONF_DIR
    from rlexp.sweep.preset import preset_path

    monkeypatch.chdir(tmp_path)
    assert preset_path("my study", None).resolve() == tmp_path / "conf" / "experiment" / "my_study.yaml"
    assert preset_path("s", str(tmp_path / "p")) == tmp_path / "p" / "s.yaml"
    monkeypatch.chdir(CONF_DIR.parent)  # in a checkout: the shipped conf/
    assert preset_path("s", None).resolve() == CONF_DIR / "experiment" / "s.yaml"


def test_tab_completion_lists_the_options():
    env = cli_env(COMP_LINE="rlexp algo=dq", COMP_POINT="13")
    p = subprocess.run([sys.executable, "-m", "rlexp", "-sc", "query=bash"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert {"algo=dqn", "algo=dqn_target"} <= set(p.stdout.split())


@pytest.mark.parametrize("module, line, expected", [
    ("rlexp.sweep.__main__", "rlexp-sweep sweep=dqn_c", {"sweep=dqn_cartpole"}),
    ("rlexp.sweep.__main__", "rlexp-sweep sweep=dqn_cartpole pruner.name=hy", {"pruner.name=hyperband"}),
    ("rlexp.sweep.__main__", "rlexp-sweep sweep=dqn_cartpole n_trials=3 algo=dq", {"algo=dqn", "algo=dqn_target"}),
    ("rlexp.sweep.__main__", "rlexp-sweep sweep=dqn_cartpole workers=2 train.max_e", {"train.max_episodes="}),
    ("rlexp.eval", "rlexp-eval run=abc video", {"video=", "video_episodes="}),
    ("rlexp.eval", "rlexp-eval render=", {"render=none", "render=human"}),
    ("analysis.report", "rlexp-report --experiment x --x ", {"episode", "env_step"}),
    ("analysis.report", "rlexp-report --run", {"--run-ids"}),
])
def test_tab_completion_of_the_other_commands(module, line, expected, monkeypatch, capsys):
    """rlexp-sweep, rlexp-eval and rlexp-report answer Hydra's completion protocol (rlexp.completion)."""
    import importlib

    monkeypatch.setenv("COMP_LINE", line)
    assert importlib.import_module(module).main(["-sc", "query=bash"]) == 0
    assert set(capsys.readouterr().out.split()) == expected


@pytest.mark.parametrize("script, module", [("rlexp-sweep", "rlexp.sweep.__main__"), ("rlexp-eval", "rlexp.eval"),
                                            ("rlexp-report", "analysis.report")])
def test_tab_completion_installs_for_each_command(script, module, monkeypatch, capsys):
    import importlib

    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", "-sc", "install=bash"])
    assert importlib.import_module(module).main(["-sc", "install=bash"]) == 0
    out = capsys.readouterr().out
    assert "hydra_bash_completion()" in out and out.rstrip().endswith(f"-F hydra_bash_completion {script}")
    with pytest.raises(SystemExit, match="install=zsh"):
        importlib.import_module(module).main(["-sc", "install=zsh"])


# --------------------------------------------------------------------------- a fresh venv
def _venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding the wheel (not the checkout); its other packages are this interpreter's."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


@pytest.mark.slow
def test_the_installed_commands_run_outside_the_checkout(wheel, tmp_path):
    venv = _venv(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    where = sh("python", "-c", "import rlexp.compose as c; print(c.__file__); print(c.CONF_DIR)").stdout.split()
    site = next(venv.glob("lib/python*/site-packages"))
    assert [Path(w).parent for w in where] == [site / "rlexp", site / "rlexp"], where
    assert sh("rlexp", "--help").stdout.startswith("rlexp is powered by Hydra")
    for script in ("rlexp-report", "rlexp-eval"):
        assert sh(script, "--help").stdout.startswith(f"usage: {script}")
    assert sh("rlexp-sweep", "--help").stdout.startswith("``rlexp-sweep sweep=NAME")
    for script, line, expected in (("rlexp", "rlexp algo=dueling", "algo=dueling_dqn"),
                                   ("rlexp-sweep", "rlexp-sweep sweep=dqn_cart", "sweep=dqn_cartpole"),
                                   ("rlexp-report", "rlexp-report --x e", "episode env_step"),
                                   ("rlexp-eval", "rlexp-eval episo", "episodes=")):
        # the real thing: bash loads the command's completion function and calls it as on a Tab
        words = len(line.split()) - 1
        script_line = (f'eval "$({script} -sc install=bash)"; COMP_LINE="{line}"; COMP_POINT={len(line)}; '
                       f'COMP_WORDS=({line}); COMP_CWORD={words}; hydra_bash_completion; echo "${{COMPREPLY[@]}}"')
        p = sh("bash", "-c", script_line)
        assert p.stdout.split() == expected.split(), (script, p.stdout, p.stderr[-2000:])

    p = sh("rlexp", "algo=dqn", "train.max_episodes=3")
    assert p.returncode == 0 and "rlexp: dqn seed=0: not solved (3 episodes" in p.stderr, p.stderr[-3000:]
    assert (work / "mlflow.db").is_file() and (work / "outputs").is_dir()

    shipped = sorted((site / "rlexp" / "conf").rglob("*"))
    p = sh("rlexp-sweep", "sweep=dqn_cartpole", "n_trials=1", "seeds=[0]", "train.max_episodes=3",
           "validation.top=0", "validation.eval_seeds=0")
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted((site / "rlexp" / "conf").rglob("*")) == shipped  # nothing written into the package
    presets = list((work / "conf" / "experiment").glob("*.yaml"))
    if presets:  # a preset (when the sweep writes one) goes to the working directory and runs from there
        p = sh("rlexp", "--config-dir", "conf", f"+experiment={presets[0].stem}", "train.max_episodes=2")
        assert p.returncode == 0, p.stderr[-3000:]
