"""Every ``python -m ...`` command of the README runs as written (issue 26).

The commands are read from the README's code blocks whatever they are at the time, so an edited
README is checked as it stands. ``python -m rlexp`` commands truly run, with a tiny budget
(``train.max_episodes=2``), in a private MLflow store; a ``$ command`` followed by an output line
must print exactly that line. Sweeps, reports and benchmarks are long: their arguments are parsed
and, for a sweep, the definition is composed and validated as the command would, and the command
is stopped there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BUDGET = {"train.max_episodes": "2"}
_SHELLS = ("", "bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Command:
    """One ``python -m`` command of the README."""

    line: int  # 1-based line of the README where it starts
    module: str
    args: tuple[str, ...]
    expect: str | None = None  # the output line the README shows after a ``$ `` command

    def __str__(self) -> str:
        return f"README.md:{self.line}: python -m {self.module} {' '.join(self.args)}".rstrip()


def readme_commands(text: str) -> list[Command]:
    """The ``python -m`` commands of the shell code blocks of ``text`` (continued lines joined,
    comments dropped, ``<placeholder>`` read as one word, ``a && b`` as two commands)."""
    out: list[Command] = []
    lines = text.splitlines()
    lang: str | None = None  # None: outside a code block
    i = 0
    while i < len(lines):
        line, start = lines[i], i
        if line.startswith("```"):
            lang = line[3:].strip() if lang is None else None
            i += 1
            continue
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        if lang not in _SHELLS or "python" not in line:
            continue
        prompt = line.startswith("$ ")
        words = shlex.split(re.sub(r"<[^>]*>", "X", line[2:] if prompt else line), comments=True)
        expect = lines[i] if prompt and i < len(lines) and not lines[i].startswith(("$ ", "```")) else None
        part: list[str] = []
        for w in [*words, "&&"]:
            if w not in ("&&", ";"):
                part.append(w)
                continue
            if len(part) >= 3 and Path(part[0]).name.startswith("python") and part[1] == "-m":
                out.append(Command(start + 1, part[2], tuple(part[3:]), expect))
            part = []
    return out


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_found():
    modules = {c.module for c in COMMANDS}
    assert {"rlexp", "rlexp.sweep", "analysis.report"} <= modules, modules
    assert any(c.expect for c in COMMANDS)  # the refused-command examples


def with_budget(args: tuple[str, ...]) -> list[str]:
    """``args`` with the tiny budget (replacing the command's own value of those keys)."""
    kept = [a for a in args if a.split("=", 1)[0] not in BUDGET]
    return [*(f"{k}={v}" for k, v in BUDGET.items()), *kept]  # before any flag (argparse)


def _box2d() -> bool:
    return importlib.util.find_spec("Box2D") is not None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module's commands (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('readme') / 'mlflow.db'}"


@pytest.fixture
def workdir(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private working directory, as on a fresh checkout, and the module's MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("RLEXP_TRACKING_FLUSH_S", "0")
    return tmp_path


def run_rlexp(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``python -m rlexp args`` in this process (one torch import for all commands); its exit code."""
    import rlexp.cli
    from rlexp.__main__ import main

    monkeypatch.setattr(sys, "argv", ["rlexp", *args])
    # a fresh process's state: no failed job yet (the CLI keeps them for its exit status)
    monkeypatch.setattr(rlexp.cli, "_failed", [])
    monkeypatch.setattr(rlexp.cli.MultirunSummary, "status", 0)
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        if "hydra/launcher=joblib" in args:
            # joblib keeps its worker processes for the next call, with this test's captured stderr
            # as theirs: a later joblib command's workers would print into this test's capture
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
    return 0


def produced_by_a_sweep(cmd: Command) -> str | None:
    """The sweep that writes the preset ``+experiment=NAME`` names, when it is not there yet."""
    for a in cmd.args:
        if a.startswith("+experiment="):
            name = a.split("=", 1)[1]
            if not (ROOT / "conf" / "experiment" / f"{name}.yaml").exists() and (ROOT / "sweeps" / f"{name}.yaml").exists():
                return name
    return None


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.module == "rlexp"], ids=str)
def test_rlexp_command_runs_as_written(cmd, workdir, monkeypatch, capfd):
    if (sweep := produced_by_a_sweep(cmd)) is not None:
        pytest.skip(f"conf/experiment/{sweep}.yaml is written by `python -m rlexp.sweep sweep={sweep}`")
    needs_box2d = any("LunarLander" in a or "BipedalWalker" in a or "CarRacing" in a for a in cmd.args)
    code = run_rlexp(with_budget(cmd.args), monkeypatch)
    out, err = capfd.readouterr()  # fd level: a launcher's worker processes print too
    assert "Traceback" not in err
    if {"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help"}.intersection(cmd.args):
        assert code == 0 and out.strip(), err  # Hydra prints, runs nothing
    elif cmd.expect is not None:  # a refused command and the line the README says it prints
        assert code == 2 and cmd.expect in err.splitlines(), err
    elif needs_box2d and not _box2d():
        assert code == 2 and 'pip install "gymnasium[box2d]"' in err, err
    else:
        assert code == 0, err
        assert "rlexp: error" not in err and re.search(r"rlexp: .*(solved|not solved)", err), err


class _Accepted(Exception):
    """Raised where a long command would start working: its arguments were accepted."""


def _accept_after(real: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Accepted
    return call


def _check_paths(cmd: Command) -> None:
    """Files of the repository the command names (``--file benchmarks/variants/x.txt``) exist."""
    for a in cmd.args:
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)+\.(txt|yaml|yml|csv|json|md)", a):
            assert (ROOT / a).exists(), f"{cmd}: {a} does not exist"


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.module != "rlexp"], ids=str)
def test_long_command_accepts_its_arguments(cmd, workdir, monkeypatch, capsys):
    """Parsed by the module's own parser (argparse, or the sweep's composition and validation),
    then stopped before any work."""
    _check_paths(cmd)
    try:
        module = importlib.import_module(cmd.module)
        if not hasattr(module, "main"):
            module = importlib.import_module(cmd.module + ".__main__")
    except ImportError as e:
        pytest.fail(f"{cmd}: {e}")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _accept_after(argparse.ArgumentParser.parse_args))
    load_module = sys.modules.get("rlexp.sweep.load") or importlib.import_module("rlexp.sweep.load")
    import rlexp.sweep

    checked = _accept_after(load_module.load)
    monkeypatch.setattr(load_module, "load", checked)
    monkeypatch.setattr(rlexp.sweep, "load", checked)
    for name in ("run_sweep", "evaluate"):  # never start work, whatever the module does first
        for mod in (rlexp.sweep, sys.modules.get("rlexp.sweep.runner")):
            if mod is not None and hasattr(mod, name):
                monkeypatch.setattr(mod, name, _accept_after(lambda *a, **k: None))
    code: Any = None
    with contextlib.suppress(_Accepted):
        try:
            code = module.main(list(cmd.args))
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        pytest.fail(f"{cmd}: stopped with exit code {code} before starting: {err.strip()[-500:]}")
