"""Small network builders shared by the algorithms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None, activation: str = "relu",
        layer_norm: bool = False) -> nn.Sequential:
    """Linear-activation stack; ``out_dim=None`` ends on the last hidden activation (a trunk).
    ``layer_norm`` puts a LayerNorm between each hidden Linear and its activation."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), *([nn.LayerNorm(h)] if layer_norm else []), _ACT[activation]()]
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


class _Rebuilt:
    """Copies and unpickled instances are rebuilt from the (copied) network ``self.net``, so views
    and references always point at the parameters of the network they belong to."""

    net: nn.Sequential

    def __getstate__(self) -> dict[str, nn.Sequential]:
        return {"net": self.net}

    def __setstate__(self, state: dict[str, nn.Sequential]) -> None:
        self.__init__(state["net"])  # type: ignore[misc]


def _np_layer_norm(m: nn.LayerNorm) -> Callable[[np.ndarray], np.ndarray]:
    w, b, eps = m.weight.detach().numpy(), m.bias.detach().numpy(), m.eps

    def norm(h: np.ndarray) -> np.ndarray:
        c = h - h.mean(axis=-1, keepdims=True)
        return c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + eps) * w + b

    return norm


class NumpyForward(_Rebuilt):
    """Single-observation forward pass of a Linear/LayerNorm/ReLU/Tanh ``nn.Sequential`` in numpy.

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
            elif isinstance(m, nn.LayerNorm):
                self.layers.append(_np_layer_norm(m))
            else:
                self.layers.append(_NP_ACT[type(m)])

    @staticmethod
    def supported(net: nn.Module) -> bool:
        return isinstance(net, nn.Sequential) and all(
            (isinstance(m, nn.Linear) and m.bias is not None and m.weight.device.type == "cpu"
             and m.weight.dtype == torch.float32) or type(m) in _NP_ACT
            or (isinstance(m, nn.LayerNorm) and m.elementwise_affine and m.bias is not None
                and len(m.normalized_shape) == 1) for m in net)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for layer in self.layers:
            h = h @ layer[0] + layer[1] if isinstance(layer, tuple) else layer(h)
        return h


class ManualMLP(_Rebuilt):
    """Batch forward pass and hand-written backward of a Linear[/LayerNorm]/ReLU|Tanh ``nn.Sequential``.

    The DQN family takes one small gradient step per env step, where autograd's graph building and
    engine cost ~150 us per step on this CPU (a third of a 256x256 step at batch 64) on top of the
    matrix products. ``forward`` keeps what the backward needs; ``backward`` turns the gradient of
    the output into the parameters' ``.grad`` with the same kernels autograd calls (``addmm``,
    ``mm``, ``sum``, ``native_layer_norm_backward``, ``threshold_backward``/``tanh_backward``),
    writing into the existing ``.grad`` tensors (allocated on first use), and optionally returns
    the gradient wrt the input (to chain a dueling head into its trunk). The gradients equal
    autograd's (tested). Parameters are held by reference, so optimizer steps and
    ``load_state_dict`` are seen; copies and unpickled instances rebuild from the copied network,
    as :class:`NumpyForward` does.
    """

    def __init__(self, net: nn.Sequential) -> None:
        assert self.supported(net), "ManualMLP: Linear, LayerNorm, ReLU and Tanh layers only"
        self.net = net
        # one block per Linear: its weight and bias, the LayerNorm and the activation after it
        self.blocks: list[tuple[torch.Tensor, torch.Tensor, nn.LayerNorm | None, type[nn.Module] | None]] = []
        for m in net:
            if isinstance(m, nn.Linear):
                assert m.bias is not None
                self.blocks.append((m.weight, m.bias, None, None))
            elif isinstance(m, nn.LayerNorm):
                w, b, _, _ = self.blocks[-1]
                self.blocks[-1] = (w, b, m, None)
            else:
                w, b, ln, _ = self.blocks[-1]
                self.blocks[-1] = (w, b, ln, type(m))

    @staticmethod
    def supported(net: nn.Module) -> bool:
        """Linear layers with biases, each followed by an optional affine LayerNorm over its
        features and an optional ReLU or Tanh."""
        if not isinstance(net, nn.Sequential) or not len(net) or not isinstance(net[0], nn.Linear):
            return False
        state = ""  # what the previous module was: linear, norm or act
        width = 0
        for m in net:
            if isinstance(m, nn.Linear):
                if m.bias is None or m.weight.dtype != torch.float32:
                    return False
                state, width = "linear", m.out_features
            elif isinstance(m, nn.LayerNorm) and state == "linear":
                if not m.elementwise_affine or m.bias is None or tuple(m.normalized_shape) != (width,):
                    return False
                state = "norm"
            elif type(m) in _BACKWARD and state in ("linear", "norm"):
                state = "act"
            else:
                return False
        return True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """The output, and what ``backward`` needs; no graph."""
        saved: list[Any] = []  # per block: its input, then (pre-norm, mean, rstd) or None
        h = x
        with torch.no_grad():
            for w, b, ln, act in self.blocks:
                saved.append(h)
                h = torch.addmm(b, h, w.t())
                if ln is not None:
                    pre = h
                    h, mean, rstd = torch.native_layer_norm(pre, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                    saved.append((pre, mean, rstd))
                else:
                    saved.append(None)
                if act is nn.ReLU:
                    h = h.relu_()
                elif act is nn.Tanh:
                    h = h.tanh_()
        saved.append(h)
        return h, saved

    def backward(self, saved: list[Any], grad_out: torch.Tensor,
                 input_grad: bool = False) -> torch.Tensor | None:
        """Write d loss / d parameter into each parameter's ``.grad``, given d loss / d output;
        return d loss / d input when ``input_grad``."""
        g = grad_out
        with torch.no_grad():
            for k in range(len(self.blocks) - 1, -1, -1):
                w, b, ln, act = self.blocks[k]
                if act is not None:
                    g = _BACKWARD[act](g, saved[2 * k + 2])  # the activation's output: the next input
                if ln is not None:
                    pre, mean, rstd = saved[2 * k + 1]
                    g, gw, gb = torch.ops.aten.native_layer_norm_backward(
                        g, pre, ln.normalized_shape, mean, rstd, ln.weight, ln.bias, [True, True, True])
                    _set_grad(ln.weight, gw)
                    _set_grad(ln.bias, gb)
                if w.grad is None:
                    w.grad = torch.empty_like(w)
                if b.grad is None:
                    b.grad = torch.empty_like(b)
                torch.mm(g.t(), saved[2 * k], out=w.grad)
                torch.sum(g, 0, out=b.grad)
                if k or input_grad:
                    g = torch.mm(g, w)
        return g if input_grad else None


def _set_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g
    else:
        p.grad.copy_(g)
