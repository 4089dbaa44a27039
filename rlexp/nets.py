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
                h = _activate_(h, act)
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


def _activate_(h: torch.Tensor, act: type[nn.Module] | None) -> torch.Tensor:
    """ReLU or Tanh in place (``None``: no activation)."""
    if act is nn.ReLU:
        return h.relu_()
    if act is nn.Tanh:
        return h.tanh_()
    return h


def _set_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = g
    else:
        p.grad.copy_(g)


class StackedMLP:
    """Several Linear/ReLU|Tanh MLPs of one shape run as one: batched matrix products over their
    weights stacked along a first dimension (the clipped DQN's two Q-networks, and their targets).

    Each Linear's weights live in one ``(k, out, in)`` tensor and its biases in one ``(k, 1, out)``
    tensor (``params``, what the optimizer steps); every network's own ``weight`` and ``bias`` are
    re-pointed at their slice (``param.data``), so the modules, their ``state_dict``, numpy views
    built afterwards and in-place updates all see the same numbers. ``forward`` and ``backward``
    call ``baddbmm``/``bmm``/``sum`` on the stacks, which on this CPU give the per-network
    ``addmm``/``mm``/``sum`` results bit for bit (tested through whole DQN updates), with half the
    kernel calls for two networks. ``rebind`` re-points the networks after a copy or an unpickling
    (a copied ``Parameter`` is a copy of its slice, not a view).
    """

    def __init__(self, nets: Sequence[nn.Sequential]) -> None:
        assert nets and all(self.supported(n) for n in nets), "StackedMLP: Linear, ReLU and Tanh layers only"
        shapes = {tuple((type(m), getattr(m, "weight", torch.empty(0)).shape) for m in n) for n in nets}
        assert len(shapes) == 1, "StackedMLP: the networks must have the same layers and widths"
        self.nets = list(nets)
        self.blocks: list[tuple[nn.Parameter, nn.Parameter, type[nn.Module] | None]] = []
        for layers in zip(*nets, strict=True):
            if isinstance(layers[0], nn.Linear):
                w = nn.Parameter(torch.stack([m.weight.detach() for m in layers]), layers[0].weight.requires_grad)
                b = nn.Parameter(torch.stack([m.bias.detach() for m in layers]).unsqueeze(1),
                                 layers[0].weight.requires_grad)
                self.blocks.append((w, b, None))
            else:
                w, b, _ = self.blocks[-1]
                self.blocks[-1] = (w, b, type(layers[0]))
        self.params: list[nn.Parameter] = [t for w, b, _ in self.blocks for t in (w, b)]
        self.rebind()

    @staticmethod
    def supported(net: nn.Module) -> bool:
        """A ManualMLP network without LayerNorm, ending on a Linear (not a trunk)."""
        return (ManualMLP.supported(net) and isinstance(net, nn.Sequential)
                and not any(isinstance(m, nn.LayerNorm) for m in net) and isinstance(net[-1], nn.Linear))

    def rebind(self) -> None:
        """Point every network's Linear weights and biases at their slices of the stacks."""
        linears = [[m for m in n if isinstance(m, nn.Linear)] for n in self.nets]
        for j, layers in enumerate(linears):
            for m, (w, b, _) in zip(layers, self.blocks, strict=True):
                m.weight.data = w.data[j]
                m.bias.data = b.data[j, 0]  # type: ignore[union-attr]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.rebind()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Every network's output for the same input ``x`` (``(B, in)``), as ``(k, B, out)``, and what
        ``backward`` needs; no graph."""
        h = x.expand(len(self.nets), *x.shape)
        saved = []
        with torch.no_grad():
            for w, b, act in self.blocks:
                saved.append(h)
                h = torch.baddbmm(b, h, w.transpose(1, 2))
                h = _activate_(h, act)
        saved.append(h)
        return h, saved

    def backward(self, saved: list[torch.Tensor], grad_out: torch.Tensor) -> None:
        """Write each network's d loss / d parameter (given d loss / d its output, ``(k, B, out)``)
        into the stacks' ``.grad``."""
        g = grad_out
        with torch.no_grad():
            for i in range(len(self.blocks) - 1, -1, -1):
                w, b, act = self.blocks[i]
                if act is not None:
                    g = _BACKWARD[act](g, saved[i + 1])
                if w.grad is None:
                    w.grad = torch.empty_like(w)
                if b.grad is None:
                    b.grad = torch.empty_like(b)
                torch.bmm(g.transpose(1, 2), saved[i], out=w.grad)
                torch.sum(g, 1, keepdim=True, out=b.grad)
                if i:
                    g = torch.bmm(g, w)

    def clip_grad_norm_(self, max_norm: float) -> None:
        """``nn.utils.clip_grad_norm_`` (2-norm, foreach) on each network's gradients separately."""
        with torch.no_grad():
            k = len(self.nets)
            grads = [p.grad[j] for j in range(k) for p in self.params]  # type: ignore[index]
            norms = torch.stack(torch._foreach_norm(grads, 2.0)).view(k, -1)
            coef = torch.clamp(max_norm / (torch.linalg.vector_norm(norms, 2.0, dim=1) + 1e-6), max=1.0)
            for p in self.params:
                assert p.grad is not None
                p.grad.mul_(coef.view(k, *([1] * (p.dim() - 1))))
