"""Small network builders shared by the algorithms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
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


def _np_relu(h: np.ndarray) -> np.ndarray:
    return np.maximum(h, 0.0, out=h)


def _np_tanh(h: np.ndarray) -> np.ndarray:
    return np.tanh(h, out=h)


_NP_ACT: dict[type[nn.Module], Callable[[np.ndarray], np.ndarray]] = {nn.ReLU: _np_relu, nn.Tanh: _np_tanh}


class NumpyForward:
    """Single-observation forward pass of a Linear/ReLU/Tanh ``nn.Sequential`` in numpy.

    Acting is one tiny forward per env step, where torch's per-call overhead (module dispatch,
    tensor wrapping; ~40 us) is several times the arithmetic; numpy does it in ~10 us. The arrays
    are *views* of the parameters, so in-place optimizer updates and ``load_state_dict`` are seen
    at once. ``supported(net)`` tells whether a network can be mirrored. A copy or an unpickled
    instance mirrors the copied network (the views are rebuilt, never copied as frozen arrays).
    """

    def __init__(self, net: nn.Sequential) -> None:
        self.net = net
        self.layers: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []
        for m in net:
            if isinstance(m, nn.Linear):
                assert m.bias is not None
                self.layers.append((m.weight.detach().numpy().T, m.bias.detach().numpy()))
            else:
                self.layers.append(_NP_ACT[type(m)])

    def __getstate__(self) -> dict[str, nn.Sequential]:
        return {"net": self.net}

    def __setstate__(self, state: dict[str, nn.Sequential]) -> None:
        self.__init__(state["net"])  # type: ignore[misc]

    @staticmethod
    def supported(net: nn.Module) -> bool:
        return isinstance(net, nn.Sequential) and all(
            (isinstance(m, nn.Linear) and m.bias is not None and m.weight.device.type == "cpu"
             and m.weight.dtype == torch.float32) or type(m) in _NP_ACT for m in net)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for layer in self.layers:
            h = h @ layer[0] + layer[1] if isinstance(layer, tuple) else layer(h)
        return h
