"""The speed-ups of the update and acting paths compute exactly what the plain torch code does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rlexp.algos.dqn import DQNAgent, td_target
from rlexp.buffer import Batch, ReplayBuffer
from rlexp.compose import compose_config
from rlexp.envs import describe
from rlexp.loops import Counters
from rlexp.nets import ManualMLP, NumpyForward, mlp
from rlexp.optim import LeanAdam


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return mlp(4, [32, 32], 3)


def test_lean_adam_matches_torch_adam_including_lr_changes_and_missing_grads():
    a, b = _net(), _net()
    oa = torch.optim.Adam(a.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    ob = LeanAdam(b.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    x = torch.randn(16, 4)
    for i in range(30):
        for net, opt in ((a, oa), (b, ob)):
            opt.zero_grad(set_to_none=True)
            net(x).pow(2).mean().backward()
            if i == 10:  # a parameter without a gradient: falls back to Adam.step, same result
                net[-1].bias.grad = None
            opt.step()
        if i == 15:
            oa.param_groups[0]["lr"] = ob.param_groups[0]["lr"] = 3e-3
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert ob.state_dict()["state"][0]["step"].item() == 30


def test_lean_adam_survives_a_state_dict_round_trip():
    net = _net()
    opt = LeanAdam(net.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.ones(2, 4)).sum().backward()
        opt.step()
    twin = copy.deepcopy(net)
    opt2 = LeanAdam(twin.parameters(), lr=1e-3)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for n, o in ((net, opt), (twin, opt2)):
        o.zero_grad()
        n(torch.ones(2, 4)).sum().backward()
        o.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numpy_forward_matches_torch_and_follows_in_place_updates(activation):
    torch.manual_seed(1)
    net = mlp(4, [16, 16], 2, activation)
    fwd = NumpyForward(net)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for _ in range(2):
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(fwd(x), want, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # an optimizer step or a target copy changes the weights in place
            for p in net.parameters():
                p.mul_(0.5).add_(0.1)
    assert not NumpyForward.supported(mlp(4, [8], 2, "gelu"))


@pytest.mark.parametrize("dueling", [False, True])
def test_greedy_action_is_the_torch_argmax(dueling):
    cfg = compose_config(["algo=dueling_dqn" if dueling else "algo=dqn", "algo.hidden=[16]"])
    agent = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
    assert agent._greedy.fast
    obs = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with torch.no_grad():
        want = agent.q(torch.from_numpy(obs)).argmax(dim=1).tolist()
    assert [agent.greedy(o) for o in obs] == want


def _buffer() -> ReplayBuffer:
    buf = ReplayBuffer(500, 4, None, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(500):
        buf.add(rng.standard_normal(4), int(rng.integers(2)), 1.0, rng.standard_normal(4), bool(rng.random() < 0.1))
    return buf


@pytest.mark.parametrize("algo", ["dqn_target", "clipped_double_dqn"])
def test_joined_td_targets_equal_per_minibatch_targets(algo):
    """With a hard-copied target the targets of all minibatches come from one forward pass."""
    cfg = compose_config([f"algo={algo}", "algo.target_update=hard", "algo.hidden=[16]"])
    agent = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
    batches = _buffer().sample(8, 5)
    second = agent.targets[1] if cfg.algo.clipped else None
    joined = Batch(*(torch.cat(p) for p in zip(*batches, strict=True)))
    ys = td_target(cfg.algo, joined, agent.nets[0], agent.targets[0], second).split(8)
    for b, y in zip(batches, ys, strict=True):
        torch.testing.assert_close(y, td_target(cfg.algo, b, agent.nets[0], agent.targets[0], second))


def test_update_batches_equals_one_update_per_minibatch():
    """The chunked update (one target pass, metrics averaged) trains exactly like single updates."""
    cfg = compose_config(["algo=dqn_target", "algo.hidden=[16]", "algo.target_update_interval=10"])
    spec = describe(cfg.env)
    torch.manual_seed(0)
    a = DQNAgent(cfg.algo, spec, cfg.optimizer, 0)
    b = copy.deepcopy(a)
    batches = _buffer().sample(8, 6)
    c = Counters(step=100)
    ma = a.update_batches(batches, c)
    singles = [b.update(x, c) for x in batches]
    for p, q in zip(a.q.parameters(), b.q.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert ma["train/loss"] == pytest.approx(np.mean([s["train/loss"] for s in singles]), rel=1e-5)
    assert a.updates == b.updates == 6


@pytest.mark.parametrize("algo", ["dqn", "dueling_dqn"])
def test_a_copied_or_pickled_agent_acts_with_its_own_weights(algo):
    import pickle

    cfg = compose_config([f"algo={algo}", "algo.hidden=[16]"])
    agent = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
    obs = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    for twin in (copy.deepcopy(agent), pickle.loads(pickle.dumps(agent))):
        with torch.no_grad():
            for p in twin.q.parameters():
                p.copy_(torch.randn_like(p))
            want = twin.q(torch.from_numpy(obs)).argmax(dim=1).tolist()
        assert [twin.greedy(o) for o in obs] == want
        with torch.no_grad():
            mine = agent.q(torch.from_numpy(obs)).argmax(dim=1).tolist()
        assert [agent.greedy(o) for o in obs] == mine


@pytest.mark.parametrize(("hidden", "activation", "norm"), [([], "relu", False), ([8], "tanh", False),
                                                            ([32, 16], "relu", False), ([16, 16, 8], "tanh", False),
                                                            ([32, 16], "relu", True), ([8], "tanh", True)])
def test_manual_backward_gives_autograds_gradients(hidden, activation, norm):
    torch.manual_seed(0)
    net = mlp(5, hidden, 3, activation, layer_norm=norm)
    if norm:  # move LayerNorm's affine parameters off their (1, 0) initialisation
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.LayerNorm):
                    m.weight.normal_()
                    m.bias.normal_()
    x, g = torch.randn(12, 5), torch.randn(12, 3)
    net(x).mul(g).sum().backward()
    want = [p.grad.clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad.fill_(float("nan"))  # the manual pass overwrites existing buffers
    manual = ManualMLP(net)
    out, inputs = manual.forward(x)
    torch.testing.assert_close(out, net(x).detach(), rtol=0, atol=0)
    manual.backward(inputs, g)
    for p, w in zip(net.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-7)
    if hidden:  # a trunk (ending on the activation) with the gradient wrt its input
        trunk = mlp(5, hidden, None, activation, layer_norm=norm)
        xg = x.clone().requires_grad_(True)
        g2 = torch.randn(12, hidden[-1])
        trunk(xg).mul(g2).sum().backward()
        want = [p.grad.clone() for p in trunk.parameters()]
        m = ManualMLP(trunk)
        dx = m.backward(m.forward(x)[1], g2, input_grad=True)
        torch.testing.assert_close(dx, xg.grad, rtol=1e-6, atol=1e-7)
        for p, w in zip(trunk.parameters(), want, strict=True):
            torch.testing.assert_close(p.grad, w, rtol=1e-6, atol=1e-7)
    assert not ManualMLP.supported(mlp(4, [8], 2, "gelu"))
    assert ManualMLP.supported(mlp(4, [8], None))  # a dueling trunk ends on its activation
    assert not ManualMLP.supported(nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    assert not ManualMLP.supported(nn.Sequential(nn.Linear(4, 2, bias=False)))


@pytest.mark.parametrize("overrides", [["algo=dqn_target"], ["algo=dqn_target", "algo.loss=mse"],
                                       ["+experiment=dqn_seed"], ["algo=double_dqn"], ["algo=clipped_double_dqn"],
                                       ["algo=dqn_target", "algo.activation=tanh", "optimizer=rmsprop"],
                                       ["algo=dueling_dqn"], ["algo=dueling_dqn", "algo.target_update=hard"],
                                       ["algo=dqn", "algo.layer_norm=true"],
                                       ["algo=dueling_dqn", "algo.layer_norm=true"]])
def test_manual_backward_trains_like_autograd(overrides, monkeypatch):
    """The DQN update without autograd (plain MLP Q-nets) follows the autograd update step by step:
    Huber and MSE, target blending, double and clipped targets, any optimizer."""
    cfg = compose_config([*overrides, "algo.hidden=[16, 16]", "algo.target_update_interval=10"])
    torch.manual_seed(0)
    a = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
    assert a.manual is not None
    b = copy.deepcopy(a)
    if a.pair is not None:  # the clipped pair's stacked path is checked against the per-net one below
        monkeypatch.setattr(DQNAgent, "stack_clipped", False)
        torch.manual_seed(0)
        a = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
        b = copy.deepcopy(a)
    b.manual = None  # the autograd path
    buf = _buffer()
    for step in range(0, 200, 20):
        batches = buf.sample(8, 3)
        ma, mb = a.update_batches(batches, Counters(step=step)), b.update_batches(batches, Counters(step=step))
        assert ma == pytest.approx(mb, rel=1e-4, abs=1e-6)
    for na, nb in zip(a.nets, b.nets, strict=True):
        for p, q in zip(na.parameters(), nb.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_manual_backward_is_used_only_where_it_applies():
    def manual(*ov: str) -> bool:
        cfg = compose_config(list(ov))
        return DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0).manual is not None

    assert manual("algo=dqn_target") and manual("algo=clipped_double_dqn") and manual("algo=dueling_dqn")
    assert not manual("algo=dqn_target", "algo.activation=gelu") and not manual("algo=dueling_dqn", "algo.hidden=[]")
    assert manual("algo=dqn", "algo.layer_norm=true") and manual("algo=dueling_dqn", "algo.layer_norm=true")
    assert not manual("algo=dqn_target", "algo.activation=elu", "algo.layer_norm=true")


def test_layer_norm_q_network_has_its_norms_and_acts_in_numpy():
    cfg = compose_config(["algo=dqn", "algo.layer_norm=true", "algo.hidden=[16, 16]"])
    agent = DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0)
    assert sum(isinstance(m, nn.LayerNorm) for m in agent.q.modules()) == 2
    assert agent._greedy.fast
    with torch.no_grad():
        for p in agent.q.parameters():
            p.normal_()
    obs = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with torch.no_grad():
        want = agent.q(torch.from_numpy(obs))
    np.testing.assert_allclose(np.stack([agent._greedy.plain(o) for o in obs]), want.numpy(), rtol=1e-4, atol=1e-4)
    assert [agent.greedy(o) for o in obs] == want.argmax(dim=1).tolist()


def _pair(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[DQNAgent, DQNAgent]:
    """The same clipped agent twice: its two nets stacked, and as two separate nets."""
    cfg = compose_config(["algo=clipped_double_dqn", "algo.hidden=[32, 32]", "algo.target_update_interval=10",
                          *overrides])
    agents = []
    for stack in (True, False):
        monkeypatch.setattr(DQNAgent, "stack_clipped", stack)
        torch.manual_seed(0)
        agents.append(DQNAgent(cfg.algo, describe(cfg.env), cfg.optimizer, 0))
    assert agents[0].pair is not None and agents[1].pair is None
    return agents[0], agents[1]


@pytest.mark.parametrize("overrides", [[], ["algo.target_update=hard", "algo.gradient_steps=3"],
                                       ["algo.target_update=none"], ["algo.max_grad_norm=0.05"],
                                       ["algo.loss=mse", "algo.target_alpha=0.5", "optimizer=rmsprop"],
                                       ["algo.terminal_reward=-1.0", "algo.activation=tanh", "algo.hidden=[64]"],
                                       ["algo.hidden=[128, 128]", "algo.batch_size=64"],
                                       ["algo.hidden=[128, 128]", "algo.batch_size=256"]])
def test_stacked_clipped_pair_trains_bit_for_bit_like_two_nets(overrides, monkeypatch):
    """The clipped form's two Q-nets stacked into one batched pass give exactly (not approximately)
    the parameters of the per-net path: soft, hard and no targets, several minibatches, active
    gradient clipping (max_grad_norm 0.05), MSE with blending, RMSprop, tanh, and the shipped
    widths and batch sizes. (At some tiny widths, e.g. hidden [8], the batched and the single
    matrix products round differently: see the next test.)"""
    a, b = _pair(overrides, monkeypatch)
    buf = _buffer()
    batch = a.cfg.batch_size if "algo.batch_size" in " ".join(overrides) else 16
    for step in range(0, 400, 20):
        batches = buf.sample(batch, 3)
        ma, mb = a.update_batches(batches, Counters(step=step)), b.update_batches(batches, Counters(step=step))
        assert ma == pytest.approx(mb, rel=1e-6, abs=1e-9)
    assert a.updates == b.updates == 60
    for na, nb in zip([*a.nets, *a.targets], [*b.nets, *b.targets], strict=True):
        for p, q in zip(na.parameters(), nb.parameters(), strict=True):
            assert torch.equal(p, q)
            assert not torch.equal(p, torch.zeros_like(p))
    obs = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    assert [a.greedy(o) for o in obs] == [b.greedy(o) for o in obs]


def test_stacked_clipped_pair_at_a_tiny_width_trains_like_two_nets_to_rounding(monkeypatch):
    a, b = _pair(["algo.hidden=[8]", "algo.activation=tanh"], monkeypatch)
    buf = _buffer()
    for step in range(0, 400, 20):
        batches = buf.sample(16, 3)
        assert a.update_batches(batches, Counters(step=step)) == pytest.approx(
            b.update_batches(batches, Counters(step=step)), rel=1e-4, abs=1e-6)
    for na, nb in zip([*a.nets, *a.targets], [*b.nets, *b.targets], strict=True):
        for p, q in zip(na.parameters(), nb.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_a_stacked_clipped_run_is_the_two_net_run(monkeypatch, tmp_path):
    """A whole training run (acting, buffer, updates, solve check) returns the same episodes."""
    from rlexp.train import train

    cfg = compose_config(["algo=clipped_double_dqn", "algo.hidden=[32, 32]", "algo.learning_starts=100",
                          "algo.batch_size=32", "train.max_episodes=25", "train.save_model=false"])
    returns = []
    for stack in (True, False):
        monkeypatch.setattr(DQNAgent, "stack_clipped", stack)
        returns.append(train(cfg, workdir=tmp_path / str(stack)).returns)
    assert returns[0] == returns[1] and len(set(returns[0])) > 3


def test_a_copied_stacked_agent_trains_and_acts_with_its_own_stacks(monkeypatch):
    import pickle

    a, _ = _pair([], monkeypatch)
    buf = _buffer()
    obs = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    for twin in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        before = [p.clone() for p in a.q.parameters()]
        twin.update_batches(buf.sample(16, 2), Counters(step=0))
        assert twin.pair is not None
        for j, net in enumerate(twin.nets):  # the twin's modules are views of the twin's stacks
            for p, (w, b, _) in zip([m for m in net.q if isinstance(m, nn.Linear)], twin.pair.blocks, strict=True):
                assert torch.equal(p.weight, w[j]) and p.weight.data_ptr() == w[j].data_ptr()
                assert p.bias.data_ptr() == b[j, 0].data_ptr()
        assert all(torch.equal(p, q) for p, q in zip(a.q.parameters(), before, strict=True))  # not the original's
        assert not all(torch.equal(p, q) for p, q in zip(twin.q.parameters(), before, strict=True))
        with torch.no_grad():
            want = twin.q(torch.from_numpy(obs)).argmax(dim=1).tolist()
        assert [twin.greedy(o) for o in obs] == want
