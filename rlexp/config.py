"""Typed configuration schema. Values live in ``conf/``; the shapes and the checks live here.

Every dataclass is registered in Hydra's ConfigStore so that a YAML file extends its schema
(``defaults: [base_dqn]``) and an unknown key or a wrong type is refused at composition. Range
checks run in ``__post_init__``, which ``OmegaConf.to_object`` calls once at the CLI edge; each
error names the public key and the offending value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A user-facing configuration error; its message names the key and the value."""


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} {why}")


def _each(prefix: str, obj: Any, names: tuple[str, ...], ok: Callable[[Any], bool], why: str) -> None:
    """``_check`` on each of ``obj``'s fields ``names`` that is set (not None), keyed ``prefix.name``."""
    for name in names:
        v = getattr(obj, name)
        if v is not None:
            _check(ok(v), f"{prefix}.{name}" if prefix else name, v, why)


def _positive(prefix: str, obj: Any, *names: str) -> None:
    _each(prefix, obj, names, lambda v: v > 0, "must be > 0")


def _at_least_one(prefix: str, obj: Any, *names: str) -> None:
    _each(prefix, obj, names, lambda v: v >= 1, "must be >= 1")


def _non_negative(prefix: str, obj: Any, *names: str) -> None:
    _each(prefix, obj, names, lambda v: v >= 0, "must be >= 0")


def _gamma(prefix: str, gamma: float) -> None:
    _check(0.0 < gamma <= 1.0, f"{prefix}.gamma", gamma, "must be in (0, 1]")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, key, value, f"must be one of {', '.join(options)}")


ACTIVATIONS = ("relu", "tanh", "elu", "gelu")


# --------------------------------------------------------------------------- environment
@dataclass
class EnvConfig:
    """A gymnasium environment."""

    id: str = MISSING  # gymnasium id, e.g. CartPole-v1; any registered id works
    threshold: float | None = None  # solve threshold when the env registers none (Pendulum)
    num_envs: int = 1  # parallel envs for on-policy collection (gymnasium vector API)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make

    def __post_init__(self) -> None:
        _check(bool(self.id), "env.id", self.id, "must name a gymnasium environment")
        _at_least_one("env", self, "num_envs")


# --------------------------------------------------------------------------- optimizer
@dataclass
class OptimizerConfig:
    """The optimizer of the algorithm's (main) network."""

    name: str = "adam"  # adam | rmsprop | sgd
    lr: float | None = None  # None: the algorithm's default (algo.lr)
    weight_decay: float = 0.0
    eps: float = 1e-8  # adam, rmsprop
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam
    alpha: float = 0.99  # rmsprop smoothing constant
    momentum: float = 0.0  # rmsprop, sgd
    nesterov: bool = False  # sgd

    def __post_init__(self) -> None:
        _choice("optimizer.name", self.name, ("adam", "rmsprop", "sgd"))
        _positive("optimizer", self, "lr", "eps")
        _non_negative("optimizer", self, "weight_decay", "momentum")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
               "optimizer.betas", self.betas, "must be two numbers in [0, 1)")


# --------------------------------------------------------------------------- algorithms
@dataclass
class AlgoConfig:
    """Fields every algorithm has."""

    name: str = MISSING  # registry name, e.g. dqn, ppo
    gamma: float = 0.99  # discount factor per env step, in (0, 1]
    lr: float = 1e-3  # default learning rate when optimizer.lr is not set
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # MLP hidden sizes
    activation: str = "relu"  # relu | tanh | elu | gelu

    def __post_init__(self) -> None:
        _gamma("algo", self.gamma)
        _positive("algo", self, "lr")
        _check(all(h >= 1 for h in self.hidden), "algo.hidden", self.hidden, "sizes must be >= 1")
        _choice("algo.activation", self.activation, ACTIVATIONS)


@dataclass
class ExplorationConfig:
    """Epsilon-greedy schedule of the value-based agents."""

    schedule: str = "linear"  # linear (per env step) | exponential (per episode) | multiplicative (per update)
    start: float = 1.0  # epsilon at the start
    end: float = 0.01  # floor
    steps: int = 10_000  # linear: env steps from start to end
    rate: float = 0.01  # exponential: eps = end + (start - end) * exp(-rate * episode)
    factor: float = 0.995  # multiplicative: eps <- max(end, eps * factor) after every update

    def __post_init__(self) -> None:
        _choice("algo.exploration.schedule", self.schedule, ("linear", "exponential", "multiplicative"))
        for name in ("start", "end"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"algo.exploration.{name}", v, "must be in [0, 1]")
        _at_least_one("algo.exploration", self, "steps")
        _positive("algo.exploration", self, "rate")
        _check(0 < self.factor <= 1, "algo.exploration.factor", self.factor, "must be in (0, 1]")


@dataclass
class OffPolicyConfig(AlgoConfig):
    """Replay and update cadence shared by the off-policy agents."""

    buffer_size: int = 50_000  # transitions kept in replay
    batch_size: int = 64  # transitions per gradient step
    learning_starts: int = 1_000  # env steps before the first update
    train_freq: int = 1  # env steps between training phases
    gradient_steps: int = 1  # updates per training phase
    max_grad_norm: float | None = 10.0  # clip of the global gradient norm; None: no clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("algo", self, "batch_size")
        _check(self.buffer_size >= self.batch_size, "algo.buffer_size", self.buffer_size,
               f"must be >= algo.batch_size ({self.batch_size})")
        _non_negative("algo", self, "learning_starts")
        _at_least_one("algo", self, "train_freq", "gradient_steps")
        _positive("algo", self, "max_grad_norm")


@dataclass
class DQNConfig(OffPolicyConfig):
    """The DQN family; the named variants in conf/algo/ are settings of these flags."""

    name: str = "dqn"
    target_update: str = "hard"  # none | hard (copy every target_update_interval steps) | soft (tau)
    target_update_interval: int = 500  # env steps between hard copies
    tau: float = 0.005  # soft update: target <- tau * online + (1 - tau) * target, per update; in (0, 1]
    double: bool = False  # online net picks argmax a', target net evaluates it
    clipped: bool = False  # two trained nets, target min(max Q1(s'), max Q2(s'))
    dueling: bool = False  # Q = V + A - mean_a A (per state)
    dueling_hidden: int = 32  # width of the value and advantage heads
    layer_norm: bool = False  # LayerNorm before each hidden activation of the Q-network
    loss: str = "huber"  # huber | mse
    target_alpha: float = 1.0  # blend y <- q + alpha * (r + gamma max q' - q), in (0, 1]; 1.0 is plain DQN
    terminal_reward: float | None = None  # replace the reward of a terminating step (seed: -1)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _choice("algo.target_update", self.target_update, ("none", "hard", "soft"))
        _at_least_one("algo", self, "target_update_interval")
        _check(0 < self.tau <= 1, "algo.tau", self.tau, "must be in (0, 1]")
        _choice("algo.loss", self.loss, ("huber", "mse"))
        _check(0 < self.target_alpha <= 1, "algo.target_alpha", self.target_alpha, "must be in (0, 1]")
        _at_least_one("algo", self, "dueling_hidden")
        _check(not (self.double and self.clipped), "algo.clipped", self.clipped,
               "cannot be combined with algo.double=true")
        _check(not (self.double and self.target_update == "none"), "algo.target_update",
               self.target_update, "must be hard or soft with algo.double=true")


@dataclass
class ReinforceConfig(AlgoConfig):
    """REINFORCE on batches of whole episodes, optionally with a learned state-value baseline."""

    name: str = "reinforce"
    lr: float = 8e-3  # policy lr when optimizer.lr is not set (seed: 8e-3)
    hidden: list[int] = field(default_factory=lambda: [64])  # policy (and baseline) MLP
    activation: str = "tanh"
    num_envs: int = 1  # envs collected from at once; env.num_envs > 1 overrides it
    episodes_per_update: int = 1  # finished episodes per gradient step
    min_steps_per_update: int = 1  # ...and at least this many env steps (seed: 1000)
    baseline: bool = False  # subtract a learned V(s) from the reward-to-go
    value_lr: float | None = None  # baseline lr; None: the policy's lr
    value_iters: int = 1  # baseline gradient steps (MSE to the reward-to-go) per update
    normalize_advantages: bool = False  # standardise G - V over the batch
    ent_coef: float = 0.0  # entropy bonus (the seed has none)
    max_grad_norm: float | None = None  # None: no clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("algo", self, "num_envs", "episodes_per_update", "min_steps_per_update", "value_iters")
        _positive("algo", self, "value_lr", "max_grad_norm")
        _non_negative("algo", self, "ent_coef")


@dataclass
class ActorCriticConfig(AlgoConfig):
    """One-network actor-critic updated once per episode on (normalised) Monte-Carlo returns."""

    name: str = "actor_critic"
    lr: float = 1e-2  # Adam lr when optimizer.lr is not set (seed: 1e-2)
    hidden: list[int] = field(default_factory=lambda: [128])  # shared trunk
    activation: str = "relu"
    num_envs: int = 1  # envs collected from at once; env.num_envs > 1 overrides it
    episodes_per_update: int = 1  # finished episodes per gradient step (seed: 1)
    normalize_returns: bool = True  # standardise each update's returns (seed); false: bootstrap truncations
    reduction: str = "sum"  # sum (seed: sum of per-step losses) | mean
    huber_delta: float = 1.0  # critic Huber loss threshold
    value_coef: float = 1.0  # weight of the critic loss
    ent_coef: float = 0.0  # entropy bonus (the seed has none)
    max_grad_norm: float | None = None  # None: no clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("algo", self, "num_envs", "episodes_per_update")
        _choice("algo.reduction", self.reduction, ("sum", "mean"))
        _positive("algo", self, "huber_delta", "value_coef", "max_grad_norm")
        _non_negative("algo", self, "ent_coef")


@dataclass
class PPOConfig(AlgoConfig):
    """PPO-Clip with GAE(lambda), separate actor and critic, KL early stopping."""

    name: str = "ppo"
    lr: float = 3e-4  # policy lr when optimizer.lr is not set (seed: 3e-4)
    value_lr: float = 1e-3  # critic lr (seed: 1e-3)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # actor and critic MLPs
    activation: str = "tanh"
    num_envs: int = 1  # envs collected from at once; env.num_envs > 1 overrides it
    n_steps: int = 4000  # env steps per env per epoch (rollout length; seed: 4000 with one env)
    gae_lambda: float = 0.97  # GAE lambda
    clip_ratio: float = 0.2  # policy ratio clipped to [1 - clip, 1 + clip]
    train_pi_iters: int = 80  # max passes over the rollout for the policy
    train_v_iters: int = 80  # passes over the rollout for the critic
    n_minibatches: int = 1  # gradient steps per pass (1: full batch, as the seed)
    target_kl: float | None = 0.01  # stop policy passes once approx KL > 1.5 x target_kl; None: never
    normalize_advantages: bool = True
    value_target: str = "reward_to_go"  # reward_to_go (seed: bootstrapped discounted sum) | lambda (A + V)
    ent_coef: float = 0.0  # entropy bonus (the seed has none)
    max_grad_norm: float | None = None  # None: no clipping

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("algo", self, "num_envs", "n_steps")
        _check(0.0 <= self.gae_lambda <= 1.0, "algo.gae_lambda", self.gae_lambda, "must be in [0, 1]")
        _check(0.0 < self.clip_ratio < 1.0, "algo.clip_ratio", self.clip_ratio, "must be in (0, 1)")
        _at_least_one("algo", self, "train_pi_iters", "train_v_iters", "n_minibatches")
        _positive("algo", self, "value_lr", "target_kl", "max_grad_norm")
        _non_negative("algo", self, "ent_coef")
        _choice("algo.value_target", self.value_target, ("reward_to_go", "lambda"))


@dataclass
class DDPGConfig(OffPolicyConfig):
    """DDPG: deterministic actor, Q critic on (state, action), soft target copies, action noise."""

    name: str = "ddpg"
    lr: float = 1e-3  # actor lr when optimizer.lr is not set (seed: 1e-3)
    critic_lr: float = 2e-3  # critic lr (seed: 2e-3)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # actor MLP
    critic_state_hidden: list[int] = field(default_factory=lambda: [16, 32])  # critic state branch
    critic_action_hidden: list[int] = field(default_factory=lambda: [32])  # critic action branch
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])  # after the concatenation
    final_init: float = 3e-3  # actor output layer init in +-final_init
    tau: float = 0.005  # soft target update rate, every gradient step
    loss: str = "mse"  # critic loss: mse (seed) | huber
    noise: str = "ou"  # ou (Ornstein-Uhlenbeck) | gaussian | none
    noise_sigma: float = 0.2  # noise scale, in action units
    noise_theta: float = 0.15  # OU mean reversion
    noise_dt: float = 1e-2  # OU time step

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("critic_state_hidden", "critic_action_hidden", "critic_hidden"):
            v = getattr(self, key)
            _check(len(v) >= 1 and all(h >= 1 for h in v), f"algo.{key}", v, "needs sizes >= 1")
        _positive("algo", self, "critic_lr", "final_init", "noise_dt")
        _non_negative("algo", self, "noise_sigma", "noise_theta")
        _check(0 < self.tau <= 1, "algo.tau", self.tau, "must be in (0, 1]")
        _choice("algo.loss", self.loss, ("huber", "mse"))
        _choice("algo.noise", self.noise, ("ou", "gaussian", "none"))


@dataclass
class SB3Config(AlgoConfig):
    """Stable-Baselines3 run under rlexp's config, seeding, episode recording and tracking."""

    name: str = MISSING  # sb3_ppo | sb3_dqn | sb3_a2c
    num_envs: int = 1  # SB3 vec-env size (n_envs); env.num_envs > 1 overrides it
    n_timesteps: int = 100_000  # horizon of lr/clip schedules and step budget unless train.max_steps is set
    lr_schedule: str = "constant"  # constant | linear (decays to 0 over the horizon, as the RL Zoo's lin_)
    kwargs: dict[str, Any] = field(default_factory=dict)  # any other constructor argument of the SB3 class

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one("algo", self, "num_envs", "n_timesteps")
        _choice("algo.lr_schedule", self.lr_schedule, ("constant", "linear"))


@dataclass
class SB3PPOConfig(SB3Config):
    """SB3 PPO; fields are its constructor arguments (defaults: the RL Zoo's CartPole-v1)."""

    name: str = "sb3_ppo"
    n_steps: int = 2048  # steps per env per rollout
    batch_size: int = 64  # minibatch size
    n_epochs: int = 10  # passes over each rollout
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_schedule: str = "constant"  # constant | linear
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("algo", self, "n_steps", "batch_size", "n_epochs", "clip_range", "vf_coef", "max_grad_norm")
        _check(0.0 <= self.gae_lambda <= 1.0, "algo.gae_lambda", self.gae_lambda, "must be in [0, 1]")
        _choice("algo.clip_schedule", self.clip_schedule, ("constant", "linear"))
        _non_negative("algo", self, "ent_coef")


@dataclass
class SB3DQNConfig(SB3Config):
    """SB3 DQN; fields are its constructor arguments (defaults: the RL Zoo's CartPole-v1)."""

    name: str = "sb3_dqn"
    buffer_size: int = 1_000_000
    learning_starts: int = 100
    batch_size: int = 32
    tau: float = 1.0  # target update rate (1: hard copy)
    train_freq: int = 4  # env steps between training phases
    gradient_steps: int = 1
    target_update_interval: int = 10_000  # env steps between target updates
    exploration_fraction: float = 0.1  # fraction of the horizon over which epsilon decays
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    max_grad_norm: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("algo", self, "buffer_size", "batch_size", "train_freq", "gradient_steps",
                  "target_update_interval", "max_grad_norm")
        _non_negative("algo", self, "learning_starts")
        _check(0 < self.tau <= 1, "algo.tau", self.tau, "must be in (0, 1]")
        for key in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            v = getattr(self, key)
            _check(0.0 <= v <= 1.0, f"algo.{key}", v, "must be in [0, 1]")


@dataclass
class SB3A2CConfig(SB3Config):
    """SB3 A2C; fields are its constructor arguments (defaults: the RL Zoo's CartPole-v1)."""

    name: str = "sb3_a2c"
    n_steps: int = 5  # steps per env per update
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    use_rms_prop: bool = True  # SB3's default optimizer for A2C
    rms_prop_eps: float = 1e-5
    normalize_advantage: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("algo", self, "n_steps", "vf_coef", "max_grad_norm", "rms_prop_eps")
        _check(0.0 <= self.gae_lambda <= 1.0, "algo.gae_lambda", self.gae_lambda, "must be in [0, 1]")
        _non_negative("algo", self, "ent_coef")


ALGO_SCHEMAS: dict[str, type[AlgoConfig]] = {
    "base_dqn": DQNConfig,
    "base_reinforce": ReinforceConfig,
    "base_actor_critic": ActorCriticConfig,
    "base_ppo": PPOConfig,
    "base_ddpg": DDPGConfig,
    "base_sb3_ppo": SB3PPOConfig,
    "base_sb3_dqn": SB3DQNConfig,
    "base_sb3_a2c": SB3A2CConfig,
}


# --------------------------------------------------------------------------- run settings
@dataclass
class TrainConfig:
    """Budgets and run-time settings."""

    max_episodes: int = 1000  # episode budget
    max_steps: int | None = None  # env-step budget; None: no step limit
    stop_on_solve: bool = True  # stop at the first episode where the solve criterion holds
    num_threads: int = 1  # torch intra-op threads; small MLPs are fastest on one
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto (a GPU when one exists, else cpu)
    log_interval: int = 1_000  # env steps between training-diagnostic metrics
    checkpoint_every: int = 100  # episodes between a member's checkpoints (and one at Ctrl-C/SIGTERM); 0: none
    save_model: bool = True  # log the trained weights as an MLflow artifact
    progress: bool = True  # the CLI's progress on stderr: a live bar per seed on a terminal, else log lines
    log_every_s: float = 10.0  # off a terminal: seconds between progress lines

    def __post_init__(self) -> None:
        _at_least_one("train", self, "max_episodes")
        _at_least_one("train", self, "max_steps", "num_threads", "log_interval")
        _non_negative("train", self, "checkpoint_every")
        _positive("train", self, "log_every_s")
        _check(re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", self.device) is not None, "train.device", self.device,
               "must be cpu, cuda, cuda:N, mps or auto")


@dataclass
class SolveConfig:
    """When a task counts as solved: mean return over `window` consecutive episodes >= threshold."""

    threshold: float | None = None  # None: env.threshold, else the env's registered reward_threshold
    window: int = 100  # consecutive episodes averaged

    def __post_init__(self) -> None:
        _at_least_one("solve", self, "window")


@dataclass
class EvalConfig:
    """The greedy evaluation at the end of a run (``python -m rlexp.eval`` runs the same code later)."""

    episodes: int = 10  # greedy episodes on evaluation seeds after training; 0: none

    def __post_init__(self) -> None:
        _non_negative("eval", self, "episodes")


MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH
MAX_RUN_NAME = 250  # the runs table's name column
MAX_TAG_KEY = 250  # MAX_ENTITY_KEY_LENGTH
MAX_TAG_VALUE = 8000  # MAX_TAG_VAL_LENGTH
_TAG_KEY = re.compile(r"[/\w.\- :]+")  # validate_param_and_metric_name


@dataclass
class TrackingConfig:
    """Where runs are recorded. The URI comes from MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""

    enabled: bool = True
    experiment: str | None = None  # None: the env id
    run_name: str | None = None  # None: {algo}-{env}-{seed}
    group: str | None = None  # multirun group tag; None: Hydra's sweep dir (or the run id)
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # MLflow's own limits (mlflow.utils.validation), checked here so a run is refused before
        # anything is written rather than failing when its experiment or tags are created
        for key, name, limit in (("tracking.experiment", self.experiment, MAX_EXPERIMENT_NAME),
                                 ("tracking.run_name", self.run_name, MAX_RUN_NAME),
                                 ("tracking.group", self.group, MAX_TAG_VALUE)):
            if name is None:
                continue
            _check(bool(name.strip()), key, name, "must not be empty (leave it unset for the default)")
            if len(name) > limit:
                raise ConfigError(f"{key} is {len(name)} characters long ({name[:40]!r}...); "
                                  f"MLflow allows at most {limit}")
            _check(name.isprintable(), key, name, "must not hold control characters (newlines, tabs)")
        for k in self.tags:
            _check(bool(_TAG_KEY.fullmatch(str(k))) and len(str(k)) <= MAX_TAG_KEY, "tracking.tags", k,
                   f"is not an MLflow tag key: at most {MAX_TAG_KEY} letters, digits, '_-./: ' and spaces")


@dataclass
class Config:
    """A whole experiment: what to train, where, for how long, and where to record it."""

    algo: Any = MISSING  # one of the algo schemas, chosen by the algo/ group
    env: EnvConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _non_negative("", self, "seed")
        _check(self.seed < 2**32, "seed", self.seed, "must be < 2**32")  # numpy's seed range
        if self.optimizer.lr is None:  # resolved once here so that every record shows the lr used
            self.optimizer.lr = self.algo.lr


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="env", name="base_env", node=EnvConfig)
    cs.store(group="optimizer", name="base_optimizer", node=OptimizerConfig)
    for name, schema in ALGO_SCHEMAS.items():
        cs.store(group="algo", name=name, node=schema)
