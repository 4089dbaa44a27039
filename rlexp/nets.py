"""Networks over a seed axis: K members' weights stacked along a leading dimension.

Every layer holds its members' parameters as one tensor (``weight``: ``(K, in, out)``, ``bias``:
``(K, 1, out)``) and maps ``(K, B, in)`` to ``(K, B, out)`` with one ``torch.baddbmm``: K small
networks for the price of about one. Member ``k`` is initialised from its own generator, exactly
as ``nn.Linear`` initialises (uniform in ``+-1/sqrt(in)``), so its weights depend on its seed
only; on the CPU ``baddbmm``/``bmm`` give each member the same bits whatever K is (tested), so a
member trains the same alone or in a batch. K = 1 is simply the smallest batch.

``forward(x, idx)`` can run a subset of members (``idx``: a slice or an index tensor) on their
own inputs: what an update that concerns only some members needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
_FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": torch.relu, "tanh": torch.tanh, "elu": F.elu,
                                                          "gelu": F.gelu}

Members = slice | torch.Tensor | None  # which members a forward pass runs (None: all)


def generators(seeds: Sequence[int], offset: int = 0) -> list[torch.Generator]:
    """One torch generator per member, seeded with ``seed + offset``."""
    return [torch.Generator().manual_seed(int(s) + offset) for s in seeds]


def _pick(t: torch.Tensor, idx: Members) -> torch.Tensor:
    return t if idx is None else t[idx]


class Linear(nn.Module):
    """K stacked affine maps ``x @ W_k + b_k``."""

    def __init__(self, in_features: int, out_features: int, gens: Sequence[torch.Generator],
                 init_range: float | None = None) -> None:
        """``init_range``: weights and bias uniform in ``+-init_range`` (default ``1/sqrt(in)``)."""
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = init_range if init_range is not None else 1.0 / math.sqrt(in_features)
        k = len(gens)
        w = torch.empty(k, out_features, in_features)
        b = torch.empty(k, 1, out_features)
        for i, g in enumerate(gens):  # per member, nn.Linear's order: weight then bias
            w[i].uniform_(-bound, bound, generator=g)
            b[i].uniform_(-bound, bound, generator=g)
        self.weight = nn.Parameter(w.transpose(1, 2).contiguous())  # (K, in, out)
        self.bias = nn.Parameter(b)

    def forward(self, x: torch.Tensor, idx: Members = None) -> torch.Tensor:
        w, b = _pick(self.weight, idx), _pick(self.bias, idx)
        if self.in_features == 1:
            # a matrix-vector product (here: the input gradient) goes to another kernel for one member
            # than for several, which rounds differently; with a second, zero column it does not
            x, w = F.pad(x, (0, 1)), F.pad(w, (0, 0, 0, 1))
        if self.out_features == 1:
            return torch.baddbmm(F.pad(b, (0, 1)), x, F.pad(w, (0, 1)))[..., :1]
        return torch.baddbmm(b, x, w)


class LayerNorm(nn.Module):
    """Per-member LayerNorm over the features, with per-member gain and shift (ones and zeros)."""

    def __init__(self, k: int, width: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.width, self.eps = width, eps
        self.weight = nn.Parameter(torch.ones(k, 1, width))
        self.bias = nn.Parameter(torch.zeros(k, 1, width))

    def forward(self, x: torch.Tensor, idx: Members = None) -> torch.Tensor:
        return torch.addcmul(_pick(self.bias, idx), F.layer_norm(x, (self.width,), eps=self.eps),
                             _pick(self.weight, idx))


class MLP(nn.Module):
    """Linear [LayerNorm] activation ... [Linear] over K members; ``out_dim=None`` ends on the last
    hidden activation (a trunk)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None, gens: Sequence[torch.Generator],
                 activation: str = "relu", layer_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(Linear(d, h, gens))
            if layer_norm:
                layers.append(LayerNorm(len(gens), h))
            layers.append(_ACT[activation]())
            d = h
        if out_dim is not None:
            layers.append(Linear(d, out_dim, gens))
            d = out_dim
        self.layers = nn.ModuleList(layers)
        self.out_dim = d
        # the layers' own forward functions, called without nn.Module's per-call hooks machinery
        # (a fifth of a small update's time), the activations as plain functions
        act = _FN[activation]
        self._steps: list[Callable[..., torch.Tensor]] = [
            m.forward if isinstance(m, Linear | LayerNorm) else (lambda x, idx, f=act: f(x)) for m in layers]

    def forward(self, x: torch.Tensor, idx: Members = None) -> torch.Tensor:
        for step in self._steps:
            x = step(x, idx)
        return x

    def __setstate__(self, state: dict[str, object]) -> None:  # copies and pickles: bind to the copied layers
        super().__setstate__(state)
        act = next((_FN[k] for k, v in _ACT.items() if any(type(m) is v for m in self.layers)), torch.relu)
        self._steps = [m.forward if isinstance(m, Linear | LayerNorm) else (lambda x, idx, f=act: f(x))
                       for m in self.layers]

    @property
    def last(self) -> Linear:
        m = self.layers[-1]
        assert isinstance(m, Linear)
        return m


def member_state(module: nn.Module, k: int, size: int) -> dict[str, torch.Tensor]:
    """Member ``k``'s parameters (a copy; stacked tensors are ``(size, ., .)``) and the shared
    buffers, for saving one member's model."""
    return {name: (t.detach()[k] if t.dim() == 3 and t.shape[0] == size else t.detach()).clone()
            for name, t in module.state_dict().items()}


@torch.no_grad()
def load_member_state(module: nn.Module, state: dict[str, torch.Tensor], k: int = 0) -> None:
    """Copy one member's saved state (:func:`member_state`) into member ``k`` of ``module``, in place
    (an optimizer's views of the parameters stay valid)."""
    own = module.state_dict()
    if set(own) != set(state):
        raise ValueError(f"saved keys {sorted(state)} != the module's {sorted(own)}")
    for name, t in own.items():
        (t[k] if t.dim() == state[name].dim() + 1 else t).copy_(state[name])
