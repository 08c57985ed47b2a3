"""One `make(env_id)` for every task of the MAGPO paper, behind one jittable, vmappable interface.

    env = envs.make("rware-tiny-4ag")
    state, ts = env.reset(key)               # ts.obs: (A, D) float32
    state, ts = env.step(state, actions)     # actions: (A,) int32, or (A, action_dim) float32 (MPE)

Every environment resets itself when an episode ends: the `TimeStep` returned with `done=True`
carries the reward of the last step of the finished episode, that episode's `episode_return`,
`episode_length` and `episode_metric`, and the *first observation of the next episode* (with
`reset=True` on the following step's input). So a rollout never stops, and

    reset[t + 1] == done[t]

for the flags of consecutive timesteps. The learner feeds `reset` to its recurrent state and `done`
to GAE; they are two different flags on purpose (see JaxMARL PR #191).

Shapes: A agents, D observation features (the agent's own view plus a one-hot agent id, except
for Connector, whose view already identifies the agent), G global-state features, K discrete
actions (for continuous tasks K = action_dim and the mask is all True).

Families and ids (`ENV_IDS` lists them all): CoordSum (written here from the paper's Appendix B),
RWARE, LBF and Connector (jumanji), SMAX and MPE (jaxmarl). The settings follow the paper's
codebase (liyheng/MAGPO on instadeepai/Mava); where we differ, a `NOTE(paper vs official code)`
comment says how and why.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
class TimeStep(NamedTuple):
    obs: jax.Array  # (A, D) float32: each agent's own observation (+ one-hot agent id)
    global_state: jax.Array  # (A, G) float32: the state for a centralised critic, per agent (+ id)
    action_mask: jax.Array  # (A, K) bool: True where the action is legal
    reward: jax.Array  # (A,) float32: the team reward each agent receives for the last step
    reset: jax.Array  # () bool: this observation is the first of an episode
    done: jax.Array  # () bool: the episode ended with the last step (terminated | truncated)
    terminated: jax.Array  # () bool: ended by the task itself (no bootstrap needed)
    truncated: jax.Array  # () bool: cut by the time limit (and not terminated)
    episode_return: jax.Array  # () float32: where done, Σ_t mean_agents(reward) of that episode
    episode_length: jax.Array  # () int32: where done, the number of steps of that episode
    episode_metric: jax.Array  # () float32: where done, the task metric the paper reports


class EnvState(NamedTuple):
    inner: Any  # the underlying environment's state
    key: jax.Array  # for the next automatic reset
    step_count: jax.Array  # () int32: steps taken in the current episode
    running_return: jax.Array  # () float32: return of the current episode so far


class _RawObs(NamedTuple):
    """What a family adapter produces: no agent ids, no episode bookkeeping."""

    obs: jax.Array  # (A, D0) the agents' own views
    state: jax.Array  # (G0,) the global state, shared by all agents
    action_mask: jax.Array  # (A, K) bool


class UnknownEnvError(ValueError):
    """Raised by `make` for an id that is not one of `ENV_IDS`."""


class MultiAgentEnv:
    """Auto-resetting, episode-tracking multi-agent environment.

    A family adapter subclasses this and implements `_reset(key) -> (inner, _RawObs)` and
    `_step(key, inner, actions) -> (inner, _RawObs, reward (A,), terminated (), metric ())`, where
    `metric` is the task metric were the episode to end at this step (ignored when
    `metric_is_return`, the metric then being the episode return). It also sets the static facts
    below in `__init__`, then calls `_finish_init()`.
    """

    env_id: str
    family: str
    num_agents: int
    time_limit: int
    continuous: bool = False
    num_actions: int  # K: discrete actions, or the action dimension for continuous tasks
    action_dim: int  # 1 for discrete tasks (one integer per agent); the vector size if continuous
    action_low: float | None = None
    action_high: float | None = None
    metric_name: str = "episode_return"  # what `episode_metric` is
    metric_is_return: bool = True
    add_agent_id: bool = True
    obs_dim: int  # D
    state_dim: int  # G

    # --- implemented by the families ---
    def _reset(self, key: jax.Array) -> tuple[Any, _RawObs]:
        raise NotImplementedError

    def _step(self, key: jax.Array, inner: Any, actions: jax.Array):
        raise NotImplementedError

    # --- the public interface ---
    def _finish_init(self) -> None:
        """Read the observation sizes off one abstract reset (no computation happens)."""
        _, raw = jax.eval_shape(self._reset, jax.random.PRNGKey(0))
        ids = self.num_agents if self.add_agent_id else 0
        self.obs_dim = raw.obs.shape[-1] + ids
        self.state_dim = raw.state.shape[-1] + self.num_agents
        assert raw.obs.shape[0] == self.num_agents and raw.action_mask.shape == (
            self.num_agents,
            self.num_actions,
        ), (raw.obs.shape, raw.action_mask.shape)

    def _views(self, raw: _RawObs) -> tuple[jax.Array, jax.Array]:
        eye = jnp.eye(self.num_agents, dtype=jnp.float32)
        obs = raw.obs.astype(jnp.float32)
        if self.add_agent_id:
            obs = jnp.concatenate([obs, eye], axis=-1)
        state = jnp.broadcast_to(raw.state.astype(jnp.float32), (self.num_agents, raw.state.shape[-1]))
        # The agent id on the global state lets one shared critic give each agent its own value.
        global_state = jnp.concatenate([state, eye], axis=-1)
        return obs, global_state

    def reset(self, key: jax.Array) -> tuple[EnvState, TimeStep]:
        key, reset_key = jax.random.split(key)
        inner, raw = self._reset(reset_key)
        obs, global_state = self._views(raw)
        false, zero_f, zero_i = jnp.bool_(False), jnp.float32(0.0), jnp.int32(0)
        state = EnvState(inner, key, zero_i, zero_f)
        timestep = TimeStep(
            obs=obs,
            global_state=global_state,
            action_mask=raw.action_mask.astype(bool),
            reward=jnp.zeros((self.num_agents,), jnp.float32),
            reset=jnp.bool_(True),
            done=false,
            terminated=false,
            truncated=false,
            episode_return=zero_f,
            episode_length=zero_i,
            episode_metric=zero_f,
        )
        return state, timestep

    def step(self, state: EnvState, actions: jax.Array) -> tuple[EnvState, TimeStep]:
        key, step_key, reset_key = jax.random.split(state.key, 3)
        inner, raw, reward, terminated, metric = self._step(step_key, state.inner, actions)
        reward = reward.astype(jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        step_count = state.step_count + 1
        episode_return = state.running_return + reward.mean()
        truncated = (step_count >= self.time_limit) & ~terminated
        done = terminated | truncated
        if self.metric_is_return:
            metric = episode_return
        # Auto-reset: the first observation of the next episode replaces the terminal one.
        reset_inner, reset_raw = self._reset(reset_key)
        inner, raw = jax.tree_util.tree_map(
            lambda r, x: jnp.where(done, r, x), (reset_inner, reset_raw), (inner, raw)
        )
        obs, global_state = self._views(raw)
        state = EnvState(
            inner=inner,
            key=key,
            step_count=jnp.where(done, 0, step_count).astype(jnp.int32),
            running_return=jnp.where(done, 0.0, episode_return).astype(jnp.float32),
        )
        timestep = TimeStep(
            obs=obs,
            global_state=global_state,
            action_mask=raw.action_mask.astype(bool),
            reward=reward,
            reset=done,
            done=done,
            terminated=terminated,
            truncated=truncated,
            episode_return=jnp.where(done, episode_return, 0.0).astype(jnp.float32),
            episode_length=jnp.where(done, step_count, 0).astype(jnp.int32),
            episode_metric=jnp.where(done, metric, 0.0).astype(jnp.float32),
        )
        return state, timestep

    def __repr__(self) -> str:
        kind = f"continuous({self.action_dim})" if self.continuous else f"discrete({self.num_actions})"
        return (
            f"<{self.env_id}: {self.num_agents} agents, obs {self.obs_dim}, state {self.state_dim}, "
            f"actions {kind}, time limit {self.time_limit}, metric {self.metric_name}>"
        )


# --------------------------------------------------------------------------------------------------
# CoordSum (the paper's Appendix B)
# --------------------------------------------------------------------------------------------------
class CoordSumState(NamedTuple):
    step_count: jax.Array  # () int32
    target: jax.Array  # () int32: the target of the current step
    counts: jax.Array  # (M, K) int32: how often agent 0 chose each action for each target value


class CoordSum(MultiAgentEnv):
    """N agents each pick an integer in 0..K-1; the team is rewarded when the integers sum to the
    step's target, and twice as much when an opponent fails to guess agent 0's integer.

    Every step a target is drawn uniformly from 0..M-1 (M = K in the paper's tasks). The opponent
    guesses that agent 0 plays what it played most often for this target earlier in the episode
    (no history: 0; ties: the smallest action). Reward, the same for all agents: 2 if the sum hits
    the target and the guess misses, 1 if the sum hits and the guess hits, 0 otherwise. 100 steps.

    Observation (the same for every agent, before its one-hot id): the target and the step count
    divided by the episode length.
    """

    family = "coordsum"

    def __init__(self, env_id: str, num_agents: int, num_actions: int, num_targets: int | None = None,
                 episode_length: int = 100):
        self.env_id = env_id
        self.num_agents = num_agents
        self.num_actions = num_actions
        self.action_dim = 1
        self.num_targets = num_targets or num_actions
        self.time_limit = episode_length
        self._finish_init()

    def _observe(self, target: jax.Array, step_count: jax.Array) -> _RawObs:
        # NOTE(paper vs official code): the released env hands the networks the raw target (an
        # integer, not normalised, not one-hot) and keeps the step count out of the agents' view;
        # Appendix B says the agents observe the step count too. We keep the raw target and add the
        # step count, scaled to [0, 1] so that it does not dwarf the other inputs.
        own = jnp.stack([target.astype(jnp.float32), step_count / self.time_limit])
        obs = jnp.broadcast_to(own, (self.num_agents, 2))
        mask = jnp.ones((self.num_agents, self.num_actions), bool)
        return _RawObs(obs=obs, state=own, action_mask=mask)

    def _reset(self, key):
        target = jax.random.randint(key, (), 0, self.num_targets, jnp.int32)
        counts = jnp.zeros((self.num_targets, self.num_actions), jnp.int32)
        inner = CoordSumState(jnp.int32(0), target, counts)
        return inner, self._observe(target, inner.step_count)

    def _step(self, key, inner: CoordSumState, actions):
        actions = actions.astype(jnp.int32)
        hits_target = actions.sum() == inner.target
        history = inner.counts[inner.target]
        guess = jnp.argmax(history)  # argmax returns the first maximum: the smallest action on ties
        guessed = guess == actions[0]
        reward = jnp.where(hits_target, jnp.where(guessed, 1.0, 2.0), 0.0)
        # NOTE(paper vs official code): one history row per target value. The released env keeps
        # num_actions rows indexed by the target, so for its -30/-50/... variants every target at
        # or above num_actions-1 shares the last row (JAX clamps out-of-range indices).
        counts = inner.counts.at[inner.target, actions[0]].add(1)
        step_count = inner.step_count + 1
        target = jax.random.randint(key, (), 0, self.num_targets, jnp.int32)
        terminated = step_count >= self.time_limit  # the task is 100 steps long: a real end
        new = CoordSumState(step_count, target, counts)
        rewards = jnp.full((self.num_agents,), reward, jnp.float32)
        return new, self._observe(target, step_count), rewards, terminated, jnp.float32(0.0)


def _make_coordsum(env_id: str, task: str) -> MultiAgentEnv:
    shape, _, targets = task.partition("-")
    num_agents, num_actions = (int(x) for x in shape.split("x"))
    return CoordSum(env_id, num_agents, num_actions, int(targets) if targets else None)


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------
_TASKS: dict[str, list[str]] = {
    "coordsum": ["3x10", "3x30", "5x20", "8x15", "3x10-30", "3x30-50", "5x20-80", "8x15-100"],
    "rware": [
        "tiny-2ag", "tiny-2ag-hard", "tiny-4ag", "tiny-4ag-hard", "small-4ag", "small-4ag-hard",
        "medium-4ag", "medium-4ag-hard", "medium-6ag", "large-4ag", "large-4ag-hard", "large-8ag",
        "large-8ag-hard", "xlarge-4ag", "xlarge-4ag-hard",
    ],
    "lbf": [
        "2s-8x8-2p-2f-coop", "8x8-2p-2f-coop", "2s-10x10-3p-3f", "10x10-3p-3f", "15x15-3p-5f",
        "15x15-4p-3f", "15x15-4p-5f",
    ],
    "connector": ["5x5x3a", "7x7x5a", "10x10x10a", "15x15x23a"],
    "smax": [
        "2s3z", "3s5z", "3s5z_vs_3s6z", "3s_vs_5z", "6h_vs_8z", "10m_vs_11m", "5m_vs_6m",
        "smacv2_5_units", "smacv2_10_units", "27m_vs_30m",
    ],
    "mpe": ["simple_spread_3ag", "simple_spread_5ag", "simple_spread_10ag"],
}
ENV_IDS: tuple[str, ...] = tuple(f"{family}-{task}" for family, tasks in _TASKS.items() for task in tasks)

_MAKERS: dict[str, Callable[[str, str], MultiAgentEnv]] = {
    "coordsum": _make_coordsum,
}


def make(env_id: str) -> MultiAgentEnv:
    """Build the environment `env_id` (one of `ENV_IDS`), with the paper's settings."""
    if env_id not in ENV_IDS:
        close = difflib.get_close_matches(env_id, ENV_IDS, n=len(ENV_IDS), cutoff=0.0)
        raise UnknownEnvError(
            f"unknown env id {env_id!r}; valid ids, closest first: {', '.join(close)}"
        )
    family, _, task = env_id.partition("-")
    return _MAKERS[family](env_id, task)
