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


_BACKWARD: dict[type[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    # gradient wrt the activation's input, from the gradient wrt its output and the output itself
    nn.ReLU: lambda g, out: torch.ops.aten.threshold_backward(g, out, 0),
    nn.Tanh: lambda g, out: torch.ops.aten.tanh_backward(g, out),
}

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


class ManualMLP:
    """Batch forward pass and hand-written backward of a Linear/ReLU/Tanh ``nn.Sequential``.

    The DQN family takes one small gradient step per env step, where autograd's graph building and
    engine cost ~150 us per step on this CPU (a third of a 256x256 step at batch 64) on top of the
    matrix products. ``forward`` keeps each layer's input; ``backward`` turns the gradient of the
    output into the parameters' ``.grad`` with the same kernels autograd calls (``addmm``, ``mm``,
    ``sum``, ``threshold_backward``/``tanh_backward``), writing into the existing ``.grad``
    tensors (allocated on first use), and optionally returns the gradient wrt the input (to chain
    a dueling head into its trunk). The gradients equal autograd's (tested). Parameters are held
    by reference, so optimizer steps and ``load_state_dict`` are seen; copies and unpickled
    instances rebuild from the copied network, as :class:`NumpyForward` does.
    """

    def __init__(self, net: nn.Sequential) -> None:
        assert self.supported(net), "ManualMLP: Linear/ReLU/Tanh layers only"
        self.net = net
        self.linears: list[tuple[torch.Tensor, torch.Tensor]] = [
            (m.weight, m.bias) for m in net if isinstance(m, nn.Linear) and m.bias is not None]
        # the activation after each Linear, None where there is none
        mods = list(net)
        self.acts: list[type[nn.Module] | None] = [
            type(mods[i + 1]) if i + 1 < len(mods) and not isinstance(mods[i + 1], nn.Linear) else None
            for i, m in enumerate(mods) if isinstance(m, nn.Linear)]

    def __getstate__(self) -> dict[str, nn.Sequential]:
        return {"net": self.net}

    def __setstate__(self, state: dict[str, nn.Sequential]) -> None:
        self.__init__(state["net"])  # type: ignore[misc]

    @staticmethod
    def supported(net: nn.Module) -> bool:
        """Linear layers with biases, each followed by at most one ReLU or Tanh."""
        if not isinstance(net, nn.Sequential) or not len(net) or not isinstance(net[0], nn.Linear):
            return False
        prev_linear = False
        for m in net:
            if isinstance(m, nn.Linear):
                if m.bias is None or m.weight.dtype != torch.float32:
                    return False
                prev_linear = True
            elif type(m) in _BACKWARD and prev_linear:
                prev_linear = False
            else:
                return False
        return True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output, and what ``backward`` needs (every Linear's input, then the output); no graph."""
        saved: list[torch.Tensor] = []
        h = x
        with torch.no_grad():
            for (w, b), act in zip(self.linears, self.acts, strict=True):
                saved.append(h)
                h = torch.addmm(b, h, w.t())
                if act is nn.ReLU:
                    h = h.relu_()
                elif act is nn.Tanh:
                    h = h.tanh_()
        saved.append(h)
        return h, saved

    def backward(self, saved: list[torch.Tensor], grad_out: torch.Tensor,
                 input_grad: bool = False) -> torch.Tensor | None:
        """Write d loss / d parameter into each parameter's ``.grad``, given d loss / d output;
        return d loss / d input when ``input_grad``."""
        g = grad_out
        with torch.no_grad():
            for k in range(len(self.linears) - 1, -1, -1):
                act = self.acts[k]
                if act is not None:
                    g = _BACKWARD[act](g, saved[k + 1])  # that activation's output
                (w, b), h = self.linears[k], saved[k]
                if w.grad is None:
                    w.grad = torch.empty_like(w)
                if b.grad is None:
                    b.grad = torch.empty_like(b)
                torch.mm(g.t(), h, out=w.grad)
                torch.sum(g, 0, out=b.grad)
                if k or input_grad:
                    g = torch.mm(g, w)
        return g if input_grad else None
