"""Tab completion for the console scripts that are not Hydra apps (``rlexp-sweep``, ``rlexp-report``,
``rlexp-eval``), in Hydra's own protocol, so one line turns it on as for ``rlexp``:

    eval "$(rlexp-sweep -sc install=bash)"        # fish: rlexp-sweep -sc install=fish | source

``-sc install=SHELL`` prints Hydra's shell function bound to the command; the shell then asks
``CMD -sc query=SHELL`` with the line typed so far in ``COMP_LINE``, and the command prints its
candidates for the word under the cursor.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from collections.abc import Callable, Sequence

# a command's candidates for the word being typed, given the words before it
Candidates = Callable[[list[str], str], list[str]]

SHELLS = ("bash", "fish")


def handle(argv: Sequence[str], candidates: Candidates) -> bool:
    """Answer ``-sc install=SHELL``, ``-sc uninstall=SHELL`` or ``-sc query=SHELL`` (``--shell-completion``
    too) and return True; False when ``argv`` asks for none of them."""
    args = list(argv)
    if len(args) != 2 or args[0] not in ("-sc", "--shell-completion"):
        return False
    action, _, shell = args[1].partition("=")
    if action not in ("install", "uninstall", "query") or shell not in SHELLS:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: error: -sc {args[1]!r}: use install=, uninstall= "
                         f"or query= with one of {', '.join(SHELLS)}")
    from hydra._internal.core_plugins.bash_completion import BashCompletion
    from hydra._internal.core_plugins.fish_completion import FishCompletion

    plugin = (BashCompletion if shell == "bash" else FishCompletion)(config_loader=None)  # type: ignore[arg-type]
    if action == "install":
        plugin.install()
    elif action == "uninstall":
        plugin.uninstall()
    else:
        words, current = split_line(os.environ.get("COMP_LINE", ""))
        found = [c for c in candidates(words, current) if c.startswith(current)]
        print((" " if shell == "bash" else "\n").join(found))
    return True


def split_line(line: str) -> tuple[list[str], str]:
    """The words typed after the command's name, and the word under the cursor ('' after a space)."""
    try:
        words = shlex.split(line)
    except ValueError:  # an open quote: complete as if it were closed
        words = shlex.split(line + '"') if line.count('"') % 2 else line.split()
    words = words[1:]
    if line.endswith(" ") or not words:
        return words, ""
    return words[:-1], words[-1]


def dataclass_keys(cls: type, prefix: str = "") -> list[str]:
    """``key=`` for each field of a config dataclass, ``key.`` leaves for nested ones: ``pruner.name=``."""
    out, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints.get(f.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out += dataclass_keys(kind, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}=")
    return out


def argparse_candidates(parser: argparse.ArgumentParser) -> Candidates:
    """An argparse command's options, and an option's choices after it (files are the shell's default)."""
    options = {s: a for a in parser._actions for s in a.option_strings}

    def candidates(words: list[str], current: str) -> list[str]:
        action = options.get(words[-1]) if words else None
        if action is not None and action.choices and not current.startswith("-"):
            return [str(c) for c in action.choices]
        if current.startswith("-") or not current:
            return sorted(s for s in options if s.startswith("--"))
        return []

    return candidates


def rlexp_overrides(words: list[str], current: str) -> list[str]:
    """What ``rlexp``'s own Hydra completion offers for ``current`` after ``words``: config groups,
    their options and keys (``algo=dq`` -> ``algo=dqn algo=dqn_target ...``)."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.bash_completion import BashCompletion
    from hydra.core.global_hydra import GlobalHydra

    from rlexp.compose import CONF_DIR
    from rlexp.config import register_configs

    register_configs()  # the schemas the YAML extends
    line = " ".join([*words, current])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return list(BashCompletion(loader)._query(config_name="config", line=line))
