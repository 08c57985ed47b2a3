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

Shapes: A agents, D observation features (a one-hot agent id, then the agent's own view), G
global-state features (no agent id), K discrete actions (for continuous tasks K = action_dim and
the mask is all True).

Families and ids (`ENV_IDS` lists them all): CoordSum (written here from the paper's Appendix B),
RWARE, LBF and Connector (jumanji), SMAX and MPE (jaxmarl). The settings follow the paper's
codebase (liyheng/MAGPO on instadeepai/Mava); where we differ, a `NOTE(paper vs official code)`
comment says how and why.
"""

from __future__ import annotations

import abc
import difflib
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------------
class TimeStep(NamedTuple):
    obs: jax.Array  # (A, D) float32: (one-hot agent id +) each agent's own observation
    global_state: jax.Array  # (G,) float32: the state for a centralised critic, the same for every
    # agent (no agent id), so stored once: a critic that reads it per agent broadcasts it itself
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
    key: jax.Array  # the env's random stream: steps (where they are random) and the next reset
    step_count: jax.Array  # () int32: steps taken in the current episode
    running_return: jax.Array  # () float32: return of the current episode so far


class _RawObs(NamedTuple):
    """What a family adapter produces: no agent ids, no episode bookkeeping."""

    obs: jax.Array  # (A, D0) the agents' own views
    state: jax.Array  # (G0,) the global state, shared by all agents
    action_mask: jax.Array  # (A, K) bool


class UnknownEnvError(ValueError):
    """Raised by `make` for an id that is not one of `ENV_IDS`."""


class MultiAgentEnv(abc.ABC):
    """Auto-resetting, episode-tracking multi-agent environment.

    A family adapter subclasses this and implements `_reset(key) -> (inner, _RawObs)` and
    `_step(key, inner, actions) -> (inner, _RawObs, reward (A,), terminated (), metric ())`, where
    `metric` is the task metric were the episode to end at this step (ignored when
    `metric_is_return`, the metric then being the episode return). It also sets the static facts
    below in `__init__`, then calls `_finish_init()`. An adapter whose views are large next to what
    they are built from may return the compact form from `_reset` and `_step` and build the views
    in `_expand` (Connector).
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
    step_uses_key: bool = True  # False where `_step` is deterministic: no key drawn per step
    # How many steps the step count that the paper's code gave Sable's positional encoding lagged
    # behind `EnvState.step_count`, floored at 0: max(step_count - sable_step_lag, 0). Mava's
    # jaxmarl wrapper (SMAX, MPE) lags by one; its jumanji wrappers and CoordSum do not.
    sable_step_lag: int = 0
    obs_dim: int  # D
    state_dim: int  # G

    # --- implemented by the families ---
    @abc.abstractmethod
    def _reset(self, key: jax.Array) -> tuple[Any, _RawObs]:
        """-> (inner state, _RawObs) of a new episode."""

    @abc.abstractmethod
    def _step(self, key: jax.Array, inner: Any, actions: jax.Array):
        """-> (inner state, _RawObs, reward (A,), terminated (), metric ())."""

    # --- the public interface ---
    def _finish_init(self) -> None:
        """Read the observation sizes off one abstract reset (no computation happens)."""
        self._reset_where = _make_reset_where(self._new_episode)
        _, raw = jax.eval_shape(self._reset, jax.random.PRNGKey(0))
        raw = jax.eval_shape(self._expand, raw)
        ids = self.num_agents if self.add_agent_id else 0
        self.obs_dim = raw.obs.shape[-1] + ids
        self.state_dim = raw.state.shape[-1]
        assert raw.obs.shape[0] == self.num_agents and raw.action_mask.shape == (
            self.num_agents,
            self.num_actions,
        ), (raw.obs.shape, raw.action_mask.shape)

    def _new_episode(self, key: jax.Array) -> tuple[jax.Array, Any, _RawObs]:
        """-> (the env's next key, inner state, _RawObs) of a new episode."""
        key, reset_key = jax.random.split(key)
        return (key, *self._reset(reset_key))

    def _expand(self, raw: _RawObs) -> _RawObs:
        """What `_reset` and `_step` return -> the agents' views. The identity, except where an
        adapter returns a compact observation (Connector: its grid) and builds the far larger
        views here, after the automatic reset has picked between the stepped and the new episode,
        so that the reset never gathers or scatters the large views."""
        return raw

    def _views(self, raw: _RawObs) -> tuple[jax.Array, jax.Array]:
        raw = self._expand(raw)
        eye = np.eye(self.num_agents, dtype=np.float32)
        obs = raw.obs.astype(jnp.float32)
        if self.add_agent_id:  # the one-hot id first, as Mava's AgentIDWrapper puts it
            obs = jnp.concatenate([jnp.broadcast_to(eye, (*obs.shape[:-1], self.num_agents)), obs], axis=-1)
        # NOTE(paper vs official code): the global state carries no agent id, as in Mava (its
        # AgentIDWrapper adds ids to `agents_view` only), so MAPPO's shared critic gives every agent
        # of a step the same value, as the paper's runs did. Mava tiles it per agent; one copy holds
        # the same numbers (the (A, 54 A) tiling of Connector-15x15x23a cost 18 % of its step).
        return obs, raw.state.astype(jnp.float32)

    def reset(self, key: jax.Array) -> tuple[EnvState, TimeStep]:
        key, inner, raw = self._new_episode(key)
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
        state, timestep, _ = self.step_and_reached(state, actions)
        return state, timestep

    def step_and_reached(self, state: EnvState, actions: jax.Array) -> tuple[EnvState, TimeStep, Any]:
        """`step`, and the underlying environment's state that the step reached, before the
        automatic reset replaces it where the episode ended: the last frame of an episode, for
        renderers (watch.py). `step` is this without it (so XLA never computes anything more)."""
        # A key is split off per step only where the step is random: where it is not (RWARE, LBF,
        # Connector), the env's key moves on only when an episode is reset, inside the reset, so
        # the per-step path draws nothing (threefry costs about 0.1 us per env-step, 6 % of LBF's).
        key, step_key = jax.random.split(state.key) if self.step_uses_key else (state.key, state.key)
        inner, raw, reward, terminated, metric = self._step(step_key, state.inner, actions)
        reached = inner
        reward = reward.astype(jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        step_count = state.step_count + 1
        episode_return = state.running_return + reward.mean()
        truncated = (step_count >= self.time_limit) & ~terminated
        done = terminated | truncated
        if self.metric_is_return:
            metric = episode_return
        # Auto-reset: the first observation of the next episode replaces the terminal one. The
        # reset is computed only on steps where some environment of the batch is done.
        key, inner, raw = self._reset_where(done, done, key, (key, inner, raw))
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
        return state, timestep, reached

    def position(self, state: EnvState) -> jax.Array:
        """The step count that the paper's code handed Sable's positional encoding for the current
        observation: `state.step_count`, lagging by `sable_step_lag` (floored at 0)."""
        return jnp.maximum(state.step_count - self.sable_step_lag, 0)

    @property
    def inner_env(self) -> Any:
        """The jumanji or jaxmarl environment underneath (None for CoordSum), whose own renderer
        draws `EnvState.inner` (SMAX: `EnvState.inner.env.state`)."""
        return getattr(self, "_env", None)

    def __repr__(self) -> str:
        kind = f"continuous({self.action_dim})" if self.continuous else f"discrete({self.num_actions})"
        return (
            f"<{self.env_id}: {self.num_agents} agents, obs {self.obs_dim}, state {self.state_dim}, "
            f"actions {kind}, time limit {self.time_limit}, metric {self.metric_name}>"
        )


def _make_reset_where(reset_fn: Callable) -> Callable:
    """`(any_done, done, key, current) -> reset_fn(key) where done else current`, computing the
    resets only when some environment is done.

    Under `vmap` a `lax.cond` on a batched flag becomes a `select` that runs both branches, so a
    plain auto-reset pays for a full reset on every step (about 1.7 steps' worth on RWARE, whose
    episodes all end together every 500 steps). This function's batching rule instead reduces the
    flag over the mapped axis and recurses, so that however many `vmap`s (seeds, envs) wrap it, the
    innermost call sees one scalar "anything done?" and a real branch that skips the resets.
    """

    def reset_all(done, key, current):  # done (*B,), key (*B, 2): a reset for every environment
        flat = jax.vmap(reset_fn)(key.reshape((-1, key.shape[-1])))
        new = jax.tree_util.tree_map(lambda x: x.reshape(done.shape + x.shape[1:]), flat)
        pick = lambda n, c: jnp.where(done.reshape(done.shape + (1,) * (c.ndim - done.ndim)), n, c)
        return jax.tree_util.tree_map(pick, new, current)

    def reset_few(done, key, current, slots):  # resets for at most `slots` done environments
        n = done.size
        index = jnp.nonzero(done.reshape(-1), size=slots, fill_value=n)[0]  # n marks an unused slot
        new = jax.vmap(reset_fn)(key.reshape(n, -1)[jnp.minimum(index, n - 1)])

        def put(c, fresh):
            flat = c.reshape((n,) + c.shape[done.ndim:])
            return flat.at[index].set(fresh, mode="drop").reshape(c.shape)

        return jax.tree_util.tree_map(put, current, new)

    @jax.custom_batching.custom_vmap
    def reset_where(any_done, done, key, current):
        if done.ndim == 0:  # a single environment
            return jax.lax.cond(any_done, lambda: reset_all(done, key, current), lambda: current)
        # Episodes that end at random times (SMAX, Connector) end a few at a time: then reset only
        # those, in a batch of 1/8 of the environments; all of them when more are done (RWARE, LBF,
        # MPE, CoordSum end together). Each environment's reset depends on its own key only, so the
        # branch taken never changes the result.
        slots = max(1, done.size // 8)
        branch = jnp.where(any_done, jnp.where(done.sum() <= slots, 1, 2), 0)
        return jax.lax.switch(branch, [
            lambda: current,
            lambda: reset_few(done, key, current, slots),
            lambda: reset_all(done, key, current),
        ])

    @reset_where.def_vmap
    def _rule(axis_size, in_batched, any_done, done, key, current):
        any_b, done_b, key_b, current_b = in_batched
        widen = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))
        any_done = jnp.any(any_done) if any_b else any_done
        done, key = widen(done, done_b), widen(key, key_b)
        current = jax.tree_util.tree_map(widen, current, current_b)
        out = reset_where(any_done, done, key, current)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return reset_where


# --------------------------------------------------------------------------------------------------
# CoordSum (the paper's Appendix B)
# --------------------------------------------------------------------------------------------------
class CoordSumState(NamedTuple):
    step_count: jax.Array  # () int32
    target: jax.Array  # () int32: the target of the current step
    counts: jax.Array  # (K, K) int32: how often agent 0 chose each action, per target (clamped to K - 1)


class CoordSum(MultiAgentEnv):
    """N agents each pick an integer in 0..K-1; the team is rewarded when the integers sum to the
    step's target, and twice as much when an opponent fails to guess agent 0's integer.

    Every step a target is drawn uniformly from 0..M-1 (M = K in the paper's tasks; the `-30`,
    `-50`, ... ids are the released code's variants with M = 30, 50, ...). The opponent guesses
    that agent 0 plays what it played most often for this target earlier in the episode (no
    history: 0; ties: the smallest action). Reward, the same for all agents: 2 if the sum hits the
    target and the guess misses, 1 if the sum hits and the guess hits, 0 otherwise. 100 steps.

    Observation (the same for every agent, before its one-hot id): the raw target, as the released
    env gives it. Ids ending in `-clock` add the step count divided by the episode length
    (Appendix B's wording). Global state: the agents' observations side by side (N copies).
    """

    family = "coordsum"

    def __init__(self, env_id: str, num_agents: int, num_actions: int, num_targets: int | None = None,
                 episode_length: int = 100, clock: bool = False):
        self.env_id = env_id
        self.num_agents = num_agents
        self.num_actions = num_actions
        self.action_dim = 1
        self.num_targets = num_targets or num_actions
        self.time_limit = episode_length
        self.clock = clock
        self._finish_init()

    def _observe(self, target: jax.Array, step_count: jax.Array) -> _RawObs:
        # NOTE(paper vs official code): Appendix B says the agents observe the step count; the
        # released env (mava/coordsum/env.py, CoordSumWrapper) gives them the raw target alone and
        # hands the step count to Sable's positional encoding only. A clock every agent sees is
        # shared randomness: decentralised agents can then coordinate time-varying choices the
        # guesser cannot follow (mappo.py, short run: 111.1 +- 6.2 with it, 107.6 +- 2.0 without),
        # which is what §3 says they cannot do. The released observation is the default; `-clock`
        # ids keep Appendix B's variant.
        own = target.astype(jnp.float32)[None]
        if self.clock:
            own = jnp.concatenate([own, (step_count / self.time_limit)[None]])
        obs = jnp.broadcast_to(own, (self.num_agents, own.shape[0]))
        mask = jnp.ones((self.num_agents, self.num_actions), bool)
        return _RawObs(obs=obs, state=obs.reshape(-1), action_mask=mask)

    def _reset(self, key):
        target = jax.random.randint(key, (), 0, self.num_targets, jnp.int32)
        counts = jnp.zeros((self.num_actions, self.num_actions), jnp.int32)
        inner = CoordSumState(jnp.int32(0), target, counts)
        return inner, self._observe(target, inner.step_count)

    def _step(self, key, inner: CoordSumState, actions):
        actions = actions.astype(jnp.int32)
        hits_target = actions.sum() == inner.target
        # The released env keeps num_actions history rows indexed by the target, so in the
        # -30/-50/... variants every target at or above num_actions - 1 shares the last row (JAX
        # clamps the index); matched with an explicit clamp. With M = K it is one row per target.
        row = jnp.minimum(inner.target, self.num_actions - 1)
        guess = jnp.argmax(inner.counts[row])  # argmax returns the first maximum: the smallest action on ties
        guessed = guess == actions[0]
        reward = jnp.where(hits_target, jnp.where(guessed, 1.0, 2.0), 0.0)
        counts = inner.counts.at[row, actions[0]].add(1)
        step_count = inner.step_count + 1
        target = jax.random.randint(key, (), 0, self.num_targets, jnp.int32)
        terminated = step_count >= self.time_limit  # the task is 100 steps long: a real end
        new = CoordSumState(step_count, target, counts)
        rewards = jnp.full((self.num_agents,), reward, jnp.float32)
        return new, self._observe(target, step_count), rewards, terminated, jnp.float32(0.0)


def _make_coordsum(env_id: str, task: str) -> MultiAgentEnv:
    task, clock = task.removesuffix("-clock"), task.endswith("-clock")
    shape, _, targets = task.partition("-")
    num_agents, num_actions = (int(x) for x in shape.split("x"))
    return CoordSum(env_id, num_agents, num_actions, int(targets) if targets else None, clock=clock)


# --------------------------------------------------------------------------------------------------
# RWARE, LBF and Connector (jumanji)
# --------------------------------------------------------------------------------------------------
# The adapters run jumanji's own `reset` and `step` (jumanji 1.1.2), built with the settings of the
# paper's codebase (mava/configs/env/{rware,lbf,connector}.yaml and the scenario files). That
# codebase pinned jumanji at commit 9ced6b8 (between 1.1.0 and 1.1.1, see its uv.lock), whose
# RobotWarehouse and LevelBasedForaging are the same code as 1.1.2's; for Connector see below.
# jumanji is imported when one of these environments is built, so `import envs` stays light. A
# jumanji state carries its own random key, so the base class's per-step key goes unused.


class Rware(MultiAgentEnv):
    """RWARE (jumanji's RobotWarehouse): robots fetch the requested shelves to the goal cells.

    Ids `rware-{size}-{N}ag[-hard]`: shelf rows x columns tiny 1x3, small 2x3, medium 2x5,
    large 3x5, xlarge 4x5, column height 8, sensor range 1, N agents, and N requested shelves at a
    time (N/2 for `-hard`). Actions (K = 5): no-op, forward, left, right, toggle load; the mask is
    jumanji's. Observation: jumanji's vector view of the 3x3 cells around the agent (itself, other
    agents, shelves). Reward: jumanji's team reward, the number of requested shelves delivered this
    step, which every agent receives (Mava's RwareWrapper repeats it per agent). The episode is cut
    (`truncated`) after 500 steps; jumanji also ends it (`terminated`) when two robots collide,
    which the action mask does not always prevent. Metric: the episode return. Global state: all
    agents' views concatenated (RWARE has no global view; Mava's default `get_global_state`).
    """

    family = "rware"
    step_uses_key = False
    _SHELF_GRID = {  # shelf rows, shelf columns
        "tiny": (1, 3), "small": (2, 3), "medium": (2, 5), "large": (3, 5), "xlarge": (4, 5),
    }

    def __init__(self, env_id: str, size: str, num_agents: int, hard: bool):
        import numpy as np
        from jumanji.environments import RobotWarehouse
        from jumanji.environments.routing.robot_warehouse.generator import RandomGenerator
        from jumanji.environments.routing.robot_warehouse.constants import _AGENTS, _SHELVES
        from jumanji.environments.routing.robot_warehouse.types import State
        from jumanji.environments.routing.robot_warehouse.utils import (
            compute_action_mask,
            is_collision,
        )
        from jumanji.environments.routing.robot_warehouse.utils_spawn import (
            spawn_agent,
            spawn_shelf,
        )

        self.shelf_rows, self.shelf_columns = self._SHELF_GRID[size]
        self.request_queue_size = num_agents // 2 if hard else num_agents
        generator = RandomGenerator(
            shelf_rows=self.shelf_rows,
            shelf_columns=self.shelf_columns,
            column_height=8,
            num_agents=num_agents,
            sensor_range=1,
            request_queue_size=self.request_queue_size,
        )
        self.time_limit = 500
        self._env = RobotWarehouse(generator=generator, time_limit=self.time_limit)
        self._is_collision = jax.vmap(is_collision, in_axes=(None, 0, 0))
        self._action_mask = compute_action_mask
        self._AGENTS_LAYER = _AGENTS
        # The shelves' layer of the grid, which does not depend on the draws (as jumanji fills it:
        # shelf i, at the i-th non-highway cell in row-major order, is written i + 1).
        rows, columns = np.nonzero(~np.asarray(generator.highways, bool))
        shelf_grid = np.zeros((2, *generator.grid_size), np.int32)
        shelf_grid[_SHELVES, rows, columns] = np.arange(1, rows.size + 1)
        self._spawn = (spawn_agent, spawn_shelf, State, jnp.asarray(shelf_grid))
        self.env_id = env_id
        self.num_agents = num_agents
        self.num_actions = 5
        self.action_dim = 1
        self._finish_init()

    def _observe(self, observation) -> _RawObs:
        view = observation.agents_view  # (A, D0) int32; the base class makes it float32
        return _RawObs(obs=view, state=view.reshape(-1), action_mask=observation.action_mask)

    def _reset(self, key):
        # jumanji's RandomGenerator and reset, but for how the agents' cells and the requested
        # shelves are drawn: jumanji draws them with `jax.random.choice(replace=False)`, which
        # shuffles (sorts) all the cells and costs 5x the rest of the reset on a CPU. We draw the
        # same distributions (uniform ordered samples without replacement; uniform directions) by
        # a partial Fisher-Yates shuffle (the modulo's bias is below 1e-7). The state is jumanji's
        # `State`, equal in everything but the draws.
        spawn_agent, spawn_shelf, State, shelf_grid = self._spawn
        generator = self._env._generator
        A, Q = self.num_agents, self.request_queue_size
        key, draw_key = jax.random.split(key)
        bits = jax.random.bits(draw_key, (2 * A + Q,))  # one draw for all (threefry is slow)
        rows, columns = shelf_grid.shape[1:]
        cells = _draw_distinct(bits[:A], rows * columns)
        x, y = jnp.unravel_index(cells, (rows, columns))
        directions = (bits[A : 2 * A] % 4).astype(jnp.int32)
        queue = _draw_distinct(bits[2 * A :], generator.shelf_ids.size)
        requested = jnp.zeros(generator.shelf_ids.shape).at[queue].set(1)
        agents = jax.vmap(spawn_agent)(jnp.stack([x, y], axis=1), directions)
        shelves = jax.vmap(spawn_shelf)(generator._shelf_positions, requested)
        grid = shelf_grid.at[self._AGENTS_LAYER, x, y].set(jnp.arange(1, self.num_agents + 1))
        inner = State(
            grid=grid,
            agents=agents,
            shelves=shelves,
            request_queue=queue,
            step_count=jnp.array(0, jnp.int32),
            action_mask=self._action_mask(grid, agents),
            key=key,
        )
        view = self._env._make_observations(grid, agents, shelves)
        return inner, _RawObs(obs=view, state=view.reshape(-1), action_mask=inner.action_mask)

    def _step(self, key, inner, actions):
        inner, timestep = self._env.step(inner, actions.astype(jnp.int32))
        # jumanji ends the episode on a collision or at its step limit; only the collision is the
        # task's own end (the step limit, the same 500, is the base class's truncation).
        agent_ids = jnp.arange(self.num_agents)
        terminated = jnp.any(self._is_collision(inner.grid, inner.agents, agent_ids))
        reward = jnp.broadcast_to(timestep.reward, (self.num_agents,))
        return inner, self._observe(timestep.observation), reward, terminated, jnp.float32(0.0)


def _draw_distinct(bits: jax.Array, n: int) -> jax.Array:
    """k = len(bits) distinct integers of 0..n-1 in uniformly random order, from k random uint32
    (a partial Fisher-Yates shuffle of 0..n-1, with the shuffled array kept as its few writes)."""
    k = bits.shape[0]
    steps = jnp.arange(k)
    picks = steps + (bits % (n - steps).astype(jnp.uint32)).astype(jnp.int32)  # i-th: in i..n-1
    written_at, written, out = [], [], []
    for i in range(k):
        j = picks[i]
        at_j, at_i = j, jnp.int32(i)  # the array's entries at j and i, after the earlier swaps
        for where, value in zip(written_at, written):
            at_j = jnp.where(where == j, value, at_j)
            at_i = jnp.where(where == i, value, at_i)
        out.append(at_j)
        written_at.append(j)
        written.append(at_i)
    return jnp.stack(out)


def _make_rware(env_id: str, task: str) -> MultiAgentEnv:
    size, agents, *hard = task.split("-")
    return Rware(env_id, size, int(agents.removesuffix("ag")), hard == ["hard"])


class Lbf(MultiAgentEnv):
    """LBF (jumanji's LevelBasedForaging): agents with levels gather food on a grid.

    Ids `lbf-[2s-]{G}x{G}-{P}p-{F}f[-coop]`: a G x G grid, P agents of level 1-2, F food items;
    each agent sees the cells within 2 (`2s-`) or G (the whole grid) of itself; `-coop` forces
    every food's level to the sum of the three lowest agent levels (with 2 agents: both), so that
    all must load it together. Actions (K = 6): no-op, up, down, left, right, load; the mask is
    jumanji's. Observation: jumanji's vector view, (row, column, level) of every food, of the agent
    itself and of the other agents (in its field of view's coordinates), (-1, -1, 0) for what it
    cannot see. Reward: the team reward, the sum of
    jumanji's agent rewards (Mava's LbfWrapper with aggregate_rewards), which every agent
    receives: eating food of level l pays l / (total level of the episode's food), so an episode
    returns at most 1, which it reaches by eating all the food. The episode ends (`terminated`)
    when all the food is eaten, or is cut (`truncated`) after 100 steps. Metric: that normalised
    episode return. Global state: all agents' views concatenated.
    """

    family = "lbf"
    step_uses_key = False

    def __init__(self, env_id: str, grid_size: int, num_agents: int, num_food: int, fov: int,
                 force_coop: bool):
        from jumanji.environments import LevelBasedForaging
        from jumanji.environments.routing.lbf.generator import RandomGenerator

        self.grid_size, self.num_food = grid_size, num_food
        self.fov, self.force_coop = fov, force_coop
        generator = RandomGenerator(
            grid_size=grid_size,
            fov=fov,
            num_agents=num_agents,
            num_food=num_food,
            max_agent_level=2,
            force_coop=force_coop,
        )
        self.time_limit = 100
        # jumanji's defaults for the rest, as Mava builds it: vector observations, rewards
        # normalised by the total food level, no penalty for a failed load. (jumanji's generator
        # never spawns an agent in a row whose index is a coordinate of some food, a slip in its
        # masking: kept, the paper's runs had it too.)
        self._env = LevelBasedForaging(generator=generator, time_limit=self.time_limit)
        self.env_id = env_id
        self.num_agents = num_agents
        self.num_actions = 6
        self.action_dim = 1
        self.metric_name = "normalised_return"
        self._finish_init()

    def _observe(self, observation) -> _RawObs:
        view = observation.agents_view  # (A, 3 (F + A)) int32
        return _RawObs(obs=view, state=view.reshape(-1), action_mask=observation.action_mask)

    def _reset(self, key):
        inner, timestep = self._env.reset(key)
        return inner, self._observe(timestep.observation)

    def _step(self, key, inner, actions):
        inner, timestep = self._env.step(inner, actions.astype(jnp.int32))
        terminated = jnp.all(inner.food_items.eaten)
        reward = jnp.broadcast_to(timestep.reward.sum(), (self.num_agents,))
        return inner, self._observe(timestep.observation), reward, terminated, jnp.float32(0.0)


def _make_lbf(env_id: str, task: str) -> MultiAgentEnv:
    parts = task.split("-")
    fov = 2 if parts[0] == "2s" else None
    parts = parts[1:] if fov else parts
    grid_size = int(parts[0].split("x")[0])
    num_agents, num_food = int(parts[1].removesuffix("p")), int(parts[2].removesuffix("f"))
    return Lbf(env_id, grid_size, num_agents, num_food, fov or grid_size, parts[-1] == "coop")


# Connector: jumanji 1.1.2 registers `Connector-v3`; the paper's codebase ran `Connector-v2`
# (jumanji 9ced6b8 = 1.1.1's Connector). What v3 changed (jumanji PRs #284, #288), and what we do:
# - Generator: v3's default `RandomWalkGenerator` is a new one, whose walks are pushed away from
#   their start for up to 1.5 x grid-size steps, so targets lie farther off: a different task
#   distribution. v2's generator survives unchanged, as `LegacyRandomWalkGenerator` (the same code
#   and the same draws from a key): we use it.
# - Dynamics: v3 rewrote the step (all agents moved at once, collisions found by comparing the new
#   positions, action masks kept in the state) but it computes the same thing: a move is legal
#   into an empty cell or the agent's own target, and when several agents move into one cell the
#   one with the highest index gets it and the others stay. The reward is unchanged: per agent,
#   +1 on the step it connects and -0.03 on every step that starts with it unconnected. (Checked:
#   jumanji 1.1.1's Connector-v2 and 1.1.2's Connector with `LegacyRandomWalkGenerator` give the
#   same boards from the same keys and the same grids, masks, rewards and ends at every step of
#   256 random legal episodes each of 5x5x3a, 7x7x5a and 10x10x10a.)
# - Time limit: v2 ended an episode at its time limit with a termination (discount 0), v3 with a
#   truncation. Ours: `terminated` when every agent is connected or blocked, the time limit is the
#   base class's `truncated` (the learner chooses whether to bootstrap there).
# - Observation: unchanged (the grid, a (A, 5) action mask, the step count).
# The paper's Connector numbers (0.94 on 5x5x3a ... 0.00-0.05 on 15x15x23a) are the *win rate*:
# the share of evaluation episodes in which every agent connected (Mava's ConnectorWrapper logs
# `won_episode` = ratio_connections == 1, which its logger turns into `win_rate`). Not the
# episode return: Mava sums the agents' rewards into the team reward, so that return reaches
# about 0.9 N (2.7 on 5x5x3a); divided by N it still cannot exceed 0.894 on 5x5x3a (1 - 0.03 x
# the mean start-to-target distance, 3.5, of v2's boards), below the paper's 0.94, and it would
# be about -0.5 for a random policy on 15x15x23a, where the paper has MAT at 0.00 +- 0.00. Not
# the share of connected agents either: a random policy connects 22% of them on 15x15x23a, where
# the paper's methods score 0.00-0.05. So `episode_metric` is 1 when the episode ended with every
# agent connected, else 0 (and `episode_return` is the return of Mava's team reward).
# NOTE(paper vs official code): the official code's `eval_metric` for Connector is the episode
# return (it picks the checkpoint of the absolute metric by it); the paper's table gives the win
# rate that the same code logs next to it.
_CONNECTOR_TIME_LIMIT = {5: 25, 7: 49, 10: 100, 15: 225}  # mava/configs/env/scenario/con-*.yaml


# The observation. The paper's Connector rows come from Mava's VectorConnectorWrapper (the
# `vector-connector` env config), not from its ConnectorWrapper (`connector`), whose (A, G, G, 5)
# view none of the five methods' default networks can take: Sable's and MAT's encoders unpack
# (B, A, D) from their input (mava/networks/retention.py, attention.py) and fail on it; the
# recurrent actors and critics (network `rnn`, MAGPO's learner in network `magpo`) apply the MLP
# torso to the last axis, per cell, and the GRU's carry (B, A, 128) cannot broadcast against the
# (B, A, G, G, 128) input (mava/networks/base.py ScannedRNN). Only the `rcnn` network (a CNN
# torso), offered as an option for rec_mappo and rec_ippo, could take it. So every method here
# sees the vector view, as MAGPO and Sable did. (The paper says nothing of the observation.)
# NOTE(paper vs official code): whether the paper's IPPO and MAPPO rows used the vector view (with
# the default `rnn` network) or the grid view (`env=connector network=rcnn`) the release does not
# say; we give them the vector view, the one observation that every method's default network
# takes. As for every task, the one-hot id comes first and the global state carries none.
_CONNECTOR_FOV = 2  # VectorConnectorWrapper's field of view: a 5 x 5 window around the head


class Connector(MultiAgentEnv):
    """Connector (jumanji's Connector, v2 task distribution): each agent draws a path from its
    start to its target on a grid; paths block every agent.

    Ids `connector-{G}x{G}x{N}a`: a G x G grid, N agents, episodes cut after 25/49/100/225 steps
    (G = 5/7/10/15). Actions (K = 5): no-op, up, right, down, left; the mask is jumanji's (moves
    into an empty cell or onto the agent's own target, none once connected).

    Observation, as Mava's VectorConnectorWrapper builds it, 54 features per agent, then its
    one-hot id (Mava's AgentIDWrapper, `implicit_agent_id: False`): 54 + N in all.
    - 0-1: the agent's head, (row, column) / G**2 (G squared, as the wrapper divides).
    - 2-3: its target, (row, column) / G**2; (0, 0) once it is connected (the head then covers
      the target, and the wrapper's argmax over an empty target layer gives cell 0).
    - 4-28: blockers in the 5 x 5 window centred on the head, row-major, rows and columns as the
      grid's: 1 for any agent's head (its own, at the centre, too), -1 for any path, 0 otherwise
      (targets are not marked here, though another agent's target blocks a move), and 1 off the
      grid (the wrapper pads with True).
    - 29-53: targets in the same window: 1 for its own target, -1 for any other agent's target
      not yet reached, 0 otherwise, and 1 off the grid (the same padding: the border reads as
      "own target").
    Global state: the N agents' 54 features concatenated (54 N; Mava's default global state for
    this wrapper, built before the ids are added, so without them).
    Reward: the team reward, the sum of jumanji's agent rewards (+1 for each agent connecting
    this step, -0.03 for each agent not yet connected), which every agent receives. The episode
    ends (`terminated`) when every agent is connected or blocked (no legal move).
    `episode_metric`: 1 if every agent is connected at the end of the episode, else 0, whose mean
    is the win rate that the paper reports (see the note above).
    """

    family = "connector"
    step_uses_key = False

    def __init__(self, env_id: str, grid_size: int, num_agents: int):
        from jumanji.environments import Connector as JumanjiConnector
        from jumanji.environments.routing.connector.generator import LegacyRandomWalkGenerator
        from jumanji.environments.routing.connector.reward import DenseRewardFn

        self.grid_size = grid_size
        self.time_limit = _CONNECTOR_TIME_LIMIT[grid_size]
        self._env = JumanjiConnector(
            generator=LegacyRandomWalkGenerator(grid_size=grid_size, num_agents=num_agents),
            reward_fn=DenseRewardFn(),  # the default, as in v2: +1 on connecting, -0.03 per step
            time_limit=self.time_limit,
        )
        self.env_id = env_id
        self.num_agents = num_agents
        self.num_actions = 5
        self.action_dim = 1
        self.metric_name = "win_rate"
        self.metric_is_return = False
        self._build_tables()
        self._finish_init()

    def _build_tables(self) -> None:
        """What a cell shows in the two windows, per value, and where a window's cells lie.

        jumanji writes agent j's path, head and target as 3j + 1, 3j + 2, 3j + 3 (0 is empty); the
        grid is padded by the field of view with one more value, 3N + 1, for "off the grid". A
        window is one gather from the padded grid, and each feature one lookup of its values.
        """
        n, fov = self.num_agents, _CONNECTOR_FOV
        value = np.arange(3 * n + 2)
        self._off_grid = 3 * n + 1
        kind = np.where((value > 0) & (value < self._off_grid), (value - 1) % 3, -1)  # 0/1/2
        off = value == self._off_grid
        blockers = np.select([off | (kind == 1), kind == 0], [1.0, -1.0], 0.0)  # head / path
        own = value[None, :] == 3 * np.arange(n)[:, None] + 3
        targets = np.select([off[None] | own, kind[None] == 2], [1.0, -1.0], 0.0)  # (N, V)
        self._blocker_table = blockers.astype(np.float32)
        self._target_table = targets.astype(np.float32)
        width = self.grid_size + 2 * fov
        side = np.arange(2 * fov + 1)
        # The padded grid's flat index of each window cell, from the head's (row, column) as
        # row * width + column: padding by fov and starting fov before the head cancel out.
        self._window = (side[:, None] * width + side[None, :]).reshape(-1).astype(np.int32)
        self._padded_width = width

    def _observe(self, inner) -> _RawObs:
        # Compact: the grid and each agent's (head, target) cells; `_expand` builds the views.
        # The target reads (0, 0) once the agent is connected, as the wrapper's argmax gives it.
        agents = inner.agents
        target = jnp.where(agents.connected[:, None], 0, agents.target)
        cells = jnp.concatenate([agents.position, target], axis=-1)  # (N, 4) int32
        return _RawObs(obs=inner.grid, state=cells, action_mask=inner.action_mask)

    def _expand(self, raw: _RawObs) -> _RawObs:
        padded = jnp.pad(raw.obs, _CONNECTOR_FOV, constant_values=self._off_grid).reshape(-1)
        cells = raw.state
        head = cells[:, 0] * self._padded_width + cells[:, 1]
        window = padded[head[:, None] + self._window]  # (N, 25) cell values
        blockers = jnp.take(self._blocker_table, window, mode="clip")
        targets = jnp.take_along_axis(self._target_table, window, axis=1, mode="clip")
        coords = cells.astype(jnp.float32) / np.float32(self.grid_size**2)
        views = jnp.concatenate([coords, blockers, targets], axis=-1)  # (N, 54)
        # Materialised once, then copied: without the barrier XLA fuses the gathers into their
        # consumers, the 54 N global state among them, and computes them again for each.
        views = jax.lax.optimization_barrier(views)
        return _RawObs(obs=views, state=views.reshape(-1), action_mask=raw.action_mask)

    def _reset(self, key):
        inner, _ = self._env.reset(key)
        return inner, self._observe(inner)

    def _step(self, key, inner, actions):
        inner, timestep = self._env.step(inner, actions.astype(jnp.int32))
        connected = inner.agents.connected
        blocked = ~jnp.any(inner.action_mask[:, 1:], axis=-1)
        terminated = jnp.all(connected | blocked)
        won = jnp.all(connected).astype(jnp.float32)
        reward = jnp.broadcast_to(timestep.reward.sum(), (self.num_agents,))
        return inner, self._observe(inner), reward, terminated, won


def _make_connector(env_id: str, task: str) -> MultiAgentEnv:
    grid_size, _, num_agents = task.removesuffix("a").split("x")
    return Connector(env_id, int(grid_size), int(num_agents))


# --------------------------------------------------------------------------------------------------
# SMAX and MPE (jaxmarl)
# --------------------------------------------------------------------------------------------------
# Both adapters call jaxmarl's `step_env` (the step without jaxmarl's own auto-reset, which would
# compute a reset on every step under vmap): our base class does the resetting. jaxmarl is imported
# when one of these environments is built, so `import envs` stays light.

# NOTE(paper vs official code): the time limits are one step longer than jaxmarl's `max_steps`
# (SMAX 100, MPE 25, the usual SMAX and MPE episode lengths). jaxmarl tests its step counter
# *before* incrementing it, so its time-out ends an episode on step max_steps + 1, and the official
# code's wrappers end episodes when jaxmarl says so: its runs had 101-step SMAX and 26-step MPE
# episodes (which matters for MPE's returns: one more step of negative reward). We keep those.
_JAXMARL_EXTRA_STEP = 1


@functools.cache
def _paper_smax_classes():
    """-> (PaperSMAX, PaperHeuristicEnemySMAX): jaxmarl 0.2.0's SMAX made to step as the paper's.

    The paper's runs used jaxmarl 0.0.6 from a fork (RuanJohn/JaxMARL, branch jax-05 at 93c462e,
    which we could not fetch). The fork's public unpin-jax branch and PyPI's jaxmarl 0.0.7 have the
    same SMAX files, and 0.1.0 differs from them only in a declared observation bound that nothing
    reads; none of them imports under our jax 0.7.2 (they need brax 0.10.3, and 0.1.0 jax<=0.4.38).
    So we keep jaxmarl 0.2.0 and put back, in the four methods below, the four rules that changed
    since. Everything else in SMAX is the same code: maps, unit stats, the SMACv2 unit types and
    start positions of its (symmetric) maps, the enemy heuristic, attacks, reward, avail actions,
    world state and the time limit. tests/test_envs_jaxmarl.py checks the result against battles
    recorded from the fork's code (tests/data/record_smax_fork.py).
    """
    from jaxmarl.environments.smax import SMAX, HeuristicEnemySMAX
    from jaxmarl.environments.smax.heuristic_enemy import create_heuristic_policy

    class PaperSMAX(SMAX):
        # NOTE(paper vs official code): the four rules below are the paper's jaxmarl, not
        # jaxmarl 0.2.0's, so that our SMAX battles are the ones the paper's numbers come from.

        def _world_step(self, key, state, actions):
            # The fork moves every unit by its movement action, dead or alive (0.2.0 keeps dead
            # units in place). Dead allies may only stop (their mask), but a dead enemy walks on:
            # its heuristic reads its all-zero view as standing at (0, 0) with no one in sight and
            # heads for its default target, which takes it north or east to the map's edge, unseen
            # yet pushing living units aside on the way (`_push_units_away`). Attacks and cooldowns
            # are 0.2.0's code, unchanged: both versions aim from the positions before the move.
            stepped = super()._world_step(key, state, actions)
            velocity = self.unit_type_velocities[state.unit_types][:, None]
            moved = state.unit_positions + actions[0] * velocity * self.time_per_step
            moved = jnp.clip(moved, 0.0, jnp.array([self.map_width, self.map_height]))
            return stepped.replace(unit_positions=moved)

        def _push_units_away(self, state, firmness: float = 1.0):
            # The fork resolves overlaps between every pair of units, the dead included: dead
            # units are pushed and push (0.2.0: living pairs only, and the dead never move). Each
            # unit moves away from each unit it overlaps, by half the overlap (relative to the
            # distance) times their offset.
            offset = state.unit_positions[:, None] - state.unit_positions[None, :]  # (U, U, 2)
            distance = jnp.linalg.norm(offset, axis=-1) + jnp.identity(self.num_agents) + 1e-6
            radius = self.unit_type_radiuses[state.unit_types]
            overlap = jax.nn.relu((radius[:, None] + radius[None, :]) / distance - 1.0)
            push = firmness * jnp.sum(offset * overlap[:, :, None], axis=1) / 2
            return state.replace(unit_positions=state.unit_positions + push)

        def _observe_features(self, state, i, j_idx):
            # What unit i sees of unit j. The fork shows j's last attack action as its raw index
            # (0 if j moved or stopped, else 5 + target; 0.2.0 divides it by j's largest action
            # index) and j's weapon cooldown raw, in seconds: it keeps falling by 1/16 every world
            # step, so it is negative once the weapon is ready and reaches about -50 by the end of
            # a battle in which j never fires (0.2.0 divides it by j's full cooldown and clips it
            # to [0, 1]).
            features = super()._observe_features(state, i, j_idx)
            same_team = (i >= self.num_allies) == (j_idx >= self.num_allies)
            seen = same_team | self.see_enemy_actions
            features = features.at[5].set(jnp.where(seen, state.prev_attack_actions[j_idx], 0))
            return features.at[6].set(state.unit_weapon_cooldowns[j_idx])

        def _get_own_features(self, state, i):
            # A unit's own weapon cooldown, raw as above (all of its features are 0 once dead).
            features = super()._get_own_features(state, i)
            cooldown = jnp.where(state.unit_alive[i], state.unit_weapon_cooldowns[i], 0.0)
            return features.at[3].set(cooldown)

    class PaperHeuristicEnemySMAX(HeuristicEnemySMAX):
        """jaxmarl's HeuristicEnemySMAX around a PaperSMAX (the same enemy heuristic)."""

        def __init__(self, enemy_shoots=True, attack_mode="closest", **env_kwargs):
            super().__init__(enemy_shoots=enemy_shoots, attack_mode=attack_mode, **env_kwargs)
            self._env = PaperSMAX(**env_kwargs)
            self.heuristic_policy = create_heuristic_policy(
                self._env, 1, shoot=enemy_shoots, attack_mode=attack_mode
            )

    return PaperSMAX, PaperHeuristicEnemySMAX


class SmaxState(NamedTuple):
    env: Any  # HeuristicEnemySMAX's state (the battle and the enemy policy's memory)
    obs: jax.Array  # (U, D0) float32: every unit's view, allies then enemies, of the current state


class Smax(MultiAgentEnv):
    """SMAX (StarCraft in JAX): the allies, our agents, against jaxmarl's heuristic enemy team,
    with the rules of the jaxmarl that the paper's runs used (see `_paper_smax_classes`).

    Agent i is jaxmarl's `ally_i`. Actions per agent (K = 5 + number of enemies): 0-3 move, 4 stop,
    5 + j attack enemy j; the mask is jaxmarl's `get_avail_actions` (dead agents may only stop;
    attacks only on living enemies in range). Reward: jaxmarl's team reward, the same for every
    ally: the enemies' health lost this step (as a share of their full health, averaged over the
    enemies) plus 1 on the step the allies win. The episode ends (`terminated`) when one side is
    wiped out, or is cut (`truncated`) after 101 steps. `episode_metric`: 1 if the allies won the
    battle (every enemy dead, some ally alive), else 0.

    Observation (before the agent id): 13 features for every other unit, allies first (zeros where
    that unit is dead or out of sight): health (share of full), position relative to the agent
    (over its sight range), last movement (x, y), last attack action (its raw index: 0 or 5 +
    target), weapon cooldown (raw seconds, negative once the weapon is ready), 6 unit-type bits;
    then the agent's own 10 (zeros once dead): health, position over the map's size, cooldown
    (raw), type bits. Global state: jaxmarl's world state (every unit's health, position on the map,
    raw cooldown and type bits, zeros for the dead; then each unit's team and type).

    The paper's jaxmarl differs from 0.2.0's in four rules, all reproduced here: the cooldowns and
    attack actions the agents see are raw (0.2.0 scales both into [0, 1]); dead units still move
    (a dead enemy walks on to the map's edge) and still collide with the living (0.2.0: neither).

    The SMACv2 maps (`smacv2_*`) draw, every episode, the allies' unit types uniformly from all six
    of jaxmarl's types (the enemies mirror them) and the start positions from SMACv2's "surround or
    reflect" distribution; the other maps have SMAC's fixed units and start positions (+ noise).
    """

    family = "smax"
    # NOTE(paper vs official code): Mava's JaxMarlWrapper (mava/wrappers/jaxmarl.py) stamps each
    # observation with the step count from *before* the step that produced it, and a reset
    # observation with 0: Sable saw 0, 0, 1, 2, ... where our step_count is 0, 1, 2, 3, ...
    sable_step_lag = 1

    def __init__(self, env_id: str, map_name: str):
        from jaxmarl.environments.smax import map_name_to_scenario
        from jaxmarl.environments.smax.heuristic_enemy_smax_env import State

        # The settings of the paper's codebase (mava/configs/env/smax.yaml); jaxmarl's defaults
        # for the rest (max_steps=100, won_battle_bonus=1, unit-list observations).
        _, PaperHeuristicEnemySMAX = _paper_smax_classes()
        self._env = PaperHeuristicEnemySMAX(
            scenario=map_name_to_scenario(map_name),
            see_enemy_actions=True,
            walls_cause_death=True,
            attack_mode="closest",
        )
        self._sim = self._env._env  # the two-team simulator underneath
        self._State = State
        self.env_id = env_id
        self.num_agents = self._env.num_allies
        self.num_enemies = self._env.num_enemies
        self.num_actions = self._sim.num_ally_actions
        self.action_dim = 1
        self.time_limit = self._sim.max_steps + _JAXMARL_EXTRA_STEP
        self.metric_name = "win_rate"
        self.metric_is_return = False
        self._finish_init()

    def _unit_views(self, obs_dict, sim_state) -> tuple[jax.Array, _RawObs]:
        """jaxmarl's observation dictionary -> (every unit's view (U, D0), what our agents see)."""
        units = jnp.stack([obs_dict[unit] for unit in self._sim.agents])
        avail = self._sim.get_avail_actions(sim_state)
        mask = jnp.stack([avail[agent] for agent in self._env.agents]).astype(bool)
        raw = _RawObs(obs=units[: self.num_agents], state=obs_dict["world_state"], action_mask=mask)
        return units, raw

    def _reset(self, key):
        # HeuristicEnemySMAX.reset, keeping the enemies' views (it drops them) for their first move.
        key, sim_key = jax.random.split(key)
        obs_dict, sim_state = self._sim.reset(sim_key)
        enemy_policy_state = self._env.get_enemy_policy_initial_state(key)
        env_state = self._State(state=sim_state, enemy_policy_state=enemy_policy_state)
        units, raw = self._unit_views(obs_dict, sim_state)
        return SmaxState(env_state, units), raw

    def _step(self, key, inner: SmaxState, actions):
        # HeuristicEnemySMAX.step_env, except that the enemies act on the views that the last step
        # computed (jaxmarl computes them afresh: the same function of the same state).
        env, sim = self._env, self._sim
        key, enemy_key = jax.random.split(key)
        enemy_actions, enemy_policy_state = env.get_enemy_actions(
            enemy_key, inner.env.enemy_policy_state, inner.obs[self.num_agents :]
        )
        enemy_actions = jnp.stack([enemy_actions[unit] for unit in env.enemy_agents])
        ally_move, ally_attack = sim._decode_discrete_actions(actions.astype(jnp.int32))
        enemy_move, enemy_attack = sim._decode_discrete_actions(enemy_actions)
        decoded = (
            jnp.concatenate([ally_move, enemy_move]),
            jnp.concatenate([ally_attack, enemy_attack]),
        )
        obs_dict, sim_state, rewards, _, _ = sim.step_env_no_decode(key, inner.env.state, decoded)
        env_state = self._State(state=sim_state, enemy_policy_state=enemy_policy_state)
        units, raw = self._unit_views(obs_dict, sim_state)

        alive = sim_state.unit_alive
        allies_alive = jnp.any(alive[: self.num_agents])
        enemies_alive = jnp.any(alive[self.num_agents :])
        # jaxmarl also ends the episode on its time-out (`dones["__all__"]`); that end is a
        # truncation, left to the base class, so `terminated` is the battle's end only.
        terminated = ~allies_alive | ~enemies_alive
        # Won: the condition for jaxmarl's won-battle bonus. Mava's SmaxWrapper reads the same
        # event off the reward (`won_episode`: last step and every reward >= 1); the two differ
        # only in a draw where every enemy went from full health to dead within the final step.
        won = ~enemies_alive & allies_alive
        reward = jnp.stack([rewards[agent] for agent in env.agents])
        return SmaxState(env_state, units), raw, reward, terminated, won


def _make_smax(env_id: str, task: str) -> MultiAgentEnv:
    return Smax(env_id, task)


class Mpe(MultiAgentEnv):
    """MPE simple_spread (jaxmarl's `MPE_simple_spread_v3`): N agents cover N landmarks.

    Agent i is jaxmarl's `agent_i`. Continuous actions, (A, 5) float32: jaxmarl's layout
    [no-op, left, right, down, up], the force being (right - left, up - down) x 5; actions are
    clipped to [action_low, action_high] = [-1, 1]. Reward of agent i, as jaxmarl gives it with
    local_ratio 0.5: 0.5 x (minus the number of other agents it collides with) + 0.5 x (minus the
    sum over landmarks of the distance to the nearest agent). No terminal state: every episode is
    cut at 26 steps. Metric: the episode return (Σ_t mean over agents of the reward). Global state:
    all agents' observations concatenated (as Mava's MPEWrapper builds it).
    """

    family = "mpe"
    continuous = True
    sable_step_lag = 1  # as SMAX's: the same Mava wrapper (see `Smax.sable_step_lag`)

    def __init__(self, env_id: str, num_agents: int):
        from jaxmarl.environments.mpe import SimpleSpreadMPE

        self._env = SimpleSpreadMPE(
            num_agents=num_agents, num_landmarks=num_agents, local_ratio=0.5,
            action_type="Continuous",
        )
        self.env_id = env_id
        self.num_agents = num_agents
        self.action_dim = self.num_actions = self._env.action_space(self._env.agents[0]).shape[0]
        # NOTE(paper vs official code): jaxmarl declares actions in [0, 1], but the official code's
        # policy head squashes with tanh and sends actions in [-1, 1] to jaxmarl unchanged (which
        # does not clip), so the paper's agents could push with up to twice jaxmarl's nominal
        # force. We declare [-1, 1] so that a policy squashed to our bounds moves as theirs did.
        self.action_low, self.action_high = -1.0, 1.0
        # No terminal state in simple_spread: its end is the time limit, a truncation. jaxmarl's
        # max_steps is 25 but its episodes last 26 steps (see `_JAXMARL_EXTRA_STEP`).
        self.time_limit = self._env.max_steps + _JAXMARL_EXTRA_STEP
        self._finish_init()

    def _observe(self, obs_dict) -> _RawObs:
        obs = jnp.stack([obs_dict[agent] for agent in self._env.agents])
        mask = jnp.ones((self.num_agents, self.num_actions), bool)
        return _RawObs(obs=obs, state=obs.reshape(-1), action_mask=mask)

    def _reset(self, key):
        obs, inner = self._env.reset(key)
        return inner, self._observe(obs)

    def _step(self, key, inner, actions):
        actions = jnp.clip(actions.astype(jnp.float32), self.action_low, self.action_high)
        action_dict = {agent: actions[i] for i, agent in enumerate(self._env.agents)}
        obs, inner, rewards, _, _ = self._env.step_env(key, inner, action_dict)
        reward = jnp.stack([rewards[agent] for agent in self._env.agents])
        return inner, self._observe(obs), reward, jnp.bool_(False), jnp.float32(0.0)


def _make_mpe(env_id: str, task: str) -> MultiAgentEnv:
    num_agents = int(task.removeprefix("simple_spread_").removesuffix("ag"))
    return Mpe(env_id, num_agents)


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
    "rware": _make_rware,
    "lbf": _make_lbf,
    "connector": _make_connector,
    "smax": _make_smax,
    "mpe": _make_mpe,
}


def make(env_id: str) -> MultiAgentEnv:
    """Build the environment `env_id` (one of `ENV_IDS`), with the paper's settings."""
    # CoordSum's Appendix-B variant: any CoordSum id + "-clock" (the step count observed too)
    base = env_id.removesuffix("-clock") if env_id.startswith("coordsum-") else env_id
    if base not in ENV_IDS:
        close = difflib.get_close_matches(env_id, ENV_IDS, n=len(ENV_IDS), cutoff=0.0)
        raise UnknownEnvError(
            f"unknown env id {env_id!r}; valid ids, closest first: {', '.join(close)}"
        )
    family, _, task = env_id.partition("-")
    return _MAKERS[family](env_id, task)
