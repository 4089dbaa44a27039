"""Small network builders shared by the algorithms."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None, activation: str = "relu") -> nn.Sequential:
    """Linear-activation stack; ``out_dim=None`` ends on the last hidden activation (a trunk)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), _ACT[activation]()]
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def out_features(net: nn.Sequential, default: int) -> int:
    """Width of the last Linear layer of ``net`` (``default`` when it has none)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else default
