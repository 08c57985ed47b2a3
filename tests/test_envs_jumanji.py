"""RWARE, LBF and Connector (jumanji): the settings of every id and each task family's own rules.

The generic interface (shapes, masks, auto-reset, flags, episode bookkeeping) is tested for every
family in test_envs.py; here: what each family must do on top, checked on states built by hand
where a rule needs a particular situation (a delivery, a collision, food eaten, paths completed).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from helpers import fast_jit

RWARE_IDS = [i for i in envs.ENV_IDS if i.startswith("rware-")]
LBF_IDS = [i for i in envs.ENV_IDS if i.startswith("lbf-")]
CONNECTOR_IDS = [i for i in envs.ENV_IDS if i.startswith("connector-")]


def episode_start(inner):
    """An `EnvState` at the first step of an episode whose jumanji state is `inner`."""
    return envs.EnvState(inner, jax.random.PRNGKey(1), jnp.int32(0), jnp.float32(0.0))


# --------------------------------------------------------------------------------------------------
# RWARE
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", RWARE_IDS)
def test_rware_settings_follow_the_id(env_id):
    size, agents, *hard = env_id.removeprefix("rware-").split("-")
    n = int(agents.removesuffix("ag"))
    shelves = {"tiny": (1, 3), "small": (2, 3), "medium": (2, 5), "large": (3, 5), "xlarge": (4, 5)}
    rows, columns = shelves[size]
    env = envs.make(env_id)
    generator = env._env._generator
    layout = (generator.shelf_rows, generator.shelf_columns, generator.column_height)
    assert layout == (rows, columns, 8)
    assert env._env.grid_size == ((8 + 1) * rows + 2, 3 * columns + 1)
    assert env.num_agents == env._env.num_agents == n
    assert env._env.request_queue_size == (n // 2 if hard else n)
    assert env._env.sensor_range == 1 and env.num_actions == 5
    assert env.time_limit == 500 and env.metric_is_return and env.add_agent_id


@pytest.fixture(scope="module")
def tiny():
    env = envs.make("rware-tiny-2ag")
    return env, fast_jit(env.step), fast_jit(env._reset)


def rware_place(inner, agent, x, y, direction, shelf=None):
    """Move `agent` to cell (x, y) facing `direction`, carrying `shelf` (an id) if given."""
    from jumanji.environments.routing.robot_warehouse.constants import _AGENTS, _SHELVES
    from jumanji.environments.routing.robot_warehouse.utils import compute_action_mask

    grid, agents, shelves = inner.grid, inner.agents, inner.shelves
    old_x, old_y = agents.position.x[agent], agents.position.y[agent]
    still_there = grid[_AGENTS, old_x, old_y] == agent + 1  # (not if another was put there)
    grid = grid.at[_AGENTS, old_x, old_y].multiply(~still_there)
    assert int(grid[_AGENTS, x, y]) == 0, "the cell is taken"
    grid = grid.at[_AGENTS, x, y].set(agent + 1)
    position = agents.position._replace(
        x=agents.position.x.at[agent].set(x), y=agents.position.y.at[agent].set(y)
    )
    agents = agents._replace(
        position=position,
        direction=agents.direction.at[agent].set(direction),
        is_carrying=agents.is_carrying.at[agent].set(int(shelf is not None)),
    )
    if shelf is not None:
        sx, sy = shelves.position.x[shelf], shelves.position.y[shelf]
        grid = grid.at[_SHELVES, sx, sy].set(0).at[_SHELVES, x, y].set(shelf + 1)
        shelves = shelves._replace(
            position=shelves.position._replace(
                x=shelves.position.x.at[shelf].set(x), y=shelves.position.y.at[shelf].set(y)
            )
        )
    inner = inner.replace(grid=grid, agents=agents, shelves=shelves)
    return inner.replace(action_mask=compute_action_mask(grid, agents))


NOOP, FORWARD, DOWN, UP = 0, 1, 2, 0  # RWARE actions; directions DOWN (row + 1) and UP (row - 1)


def test_rware_rewards_every_agent_for_a_delivery_and_nothing_else(tiny):
    env, step, reset = tiny
    inner, _ = reset(jax.random.PRNGKey(0))
    requested = int(inner.request_queue[0])
    (goal_y, goal_x) = (int(v) for v in env._env.goals[0])  # jumanji stores goals as (column, row)
    # Agent 0 carries a requested shelf, one cell above a goal, facing it; agent 1 far away.
    inner = rware_place(inner, 0, goal_x - 1, goal_y, DOWN, shelf=requested)
    inner = rware_place(inner, 1, 0, 0, DOWN)
    state = episode_start(inner)

    state, ts = step(state, jnp.array([NOOP, NOOP]))
    assert np.all(np.asarray(ts.reward) == 0.0) and not bool(ts.done)
    state, ts = step(state, jnp.array([FORWARD, NOOP]))
    np.testing.assert_array_equal(ts.reward, [1.0, 1.0])  # the team reward, to every agent
    assert not bool(ts.done)
    queue = np.asarray(state.inner.request_queue)
    assert requested not in queue and len(set(queue.tolist())) == env._env.request_queue_size
    state, ts = step(state, jnp.array([NOOP, NOOP]))  # the shelf stays on the goal: paid once
    np.testing.assert_array_equal(ts.reward, [0.0, 0.0])


def test_rware_collision_terminates_the_episode(tiny):
    env, step, reset = tiny
    inner, _ = reset(jax.random.PRNGKey(0))
    inner = rware_place(inner, 0, 2, 0, DOWN)
    inner = rware_place(inner, 1, 3, 0, UP)  # right below it: agent 0 steps onto agent 1
    _, ts = step(episode_start(inner), jnp.array([FORWARD, NOOP]))
    assert bool(ts.terminated) and bool(ts.done) and not bool(ts.truncated)
    assert int(ts.episode_length) == 1 and bool(ts.reset)


def test_rware_time_limit_truncates_after_500_steps(tiny):
    env, _, _ = tiny

    @fast_jit
    def idle_episode(key):
        state, _ = env.reset(key)

        def body(state, _):
            no_ops = jnp.zeros(env.num_agents, jnp.int32)  # (so no collision)
            state, ts = env.step(state, no_ops)
            return state, (ts.done, ts.truncated, ts.terminated, ts.episode_length, ts.reward)

        return jax.lax.scan(body, state, None, length=501)[1]

    outputs = idle_episode(jax.random.PRNGKey(2))
    done, truncated, terminated, length, reward = (np.asarray(x) for x in outputs)
    assert np.flatnonzero(done).tolist() == [499]  # the 500th step, and only it
    assert truncated[499] and not terminated.any() and length[499] == 500
    assert np.all(reward == 0.0)


def test_rware_reset_is_jumanjis_state_with_uniform_draws(tiny):
    from jumanji.environments.routing.robot_warehouse.constants import _AGENTS, _SHELVES
    from jumanji.environments.routing.robot_warehouse.utils import compute_action_mask

    env, _, reset = tiny
    ours, raw = reset(jax.random.PRNGKey(3))
    theirs, timestep = fast_jit(env._env.reset)(jax.random.PRNGKey(3))
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert shapes(ours) == shapes(theirs)
    np.testing.assert_array_equal(ours.grid[_SHELVES], theirs.grid[_SHELVES])  # the fixed layout
    np.testing.assert_array_equal(ours.shelves.position.x, theirs.shelves.position.x)
    np.testing.assert_array_equal(ours.action_mask, compute_action_mask(ours.grid, ours.agents))
    views = env._env._make_observations(ours.grid, ours.agents, ours.shelves)
    np.testing.assert_array_equal(raw.obs, views)

    # Many resets: agents on distinct cells, written on the grid; the requested shelves are the
    # queue; every cell, direction and shelf drawn about equally often.
    states, _ = fast_jit(jax.vmap(env._reset))(jax.random.split(jax.random.PRNGKey(4), 6000))
    x, y = np.asarray(states.agents.position.x), np.asarray(states.agents.position.y)
    rows, columns = env._env.grid_size
    assert np.all(x[:, 0] * columns + y[:, 0] != x[:, 1] * columns + y[:, 1])
    layer = np.asarray(states.grid[:, _AGENTS])
    for agent in range(2):
        assert np.all(layer[np.arange(6000), x[:, agent], y[:, agent]] == agent + 1)
    assert np.all((layer > 0).sum(axis=(1, 2)) == 2)
    queue, requested = np.asarray(states.request_queue), np.asarray(states.shelves.is_requested)
    assert np.all(queue[:, 0] != queue[:, 1])
    assert np.all(requested.sum(1) == 2) and np.all(requested[np.arange(6000)[:, None], queue] == 1)

    def roughly_uniform(values, n):
        counts = np.bincount(values.ravel(), minlength=n)
        expected = values.size / n
        assert counts.size == n, counts
        assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts

    roughly_uniform(x * columns + y, rows * columns)
    roughly_uniform(np.asarray(states.agents.direction), 4)
    roughly_uniform(queue, int(env._env._generator.shelf_ids.size))


# --------------------------------------------------------------------------------------------------
# LBF
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", LBF_IDS)
def test_lbf_settings_follow_the_id(env_id):
    env = envs.make(env_id)
    task = env_id.removeprefix("lbf-")
    grid = int(task.removeprefix("2s-").split("x")[0])
    generator = env._env._generator
    assert generator.grid_size == grid
    assert generator.fov == (2 if task.startswith("2s-") else grid)
    count = lambda suffix: int(next(p for p in task.split("-") if p.endswith(suffix))[:-1])
    assert generator.num_agents == env.num_agents == count("p")
    assert generator.num_food == count("f")
    assert generator.max_agent_level == 2 and generator.force_coop == task.endswith("-coop")
    assert env.time_limit == 100 and env.num_actions == 6
    assert env._env.normalize_reward and env._env.penalty == 0.0  # Mava's LbfWrapper defaults
    assert env.metric_is_return and env.add_agent_id


@pytest.mark.parametrize("env_id", ["lbf-2s-10x10-3p-3f", "lbf-10x10-3p-3f"])
def test_lbf_agents_see_only_their_field_of_view(env_id):
    env = envs.make(env_id)
    states, raw = fast_jit(jax.vmap(env._reset))(jax.random.split(jax.random.PRNGKey(0), 300))
    fov, F = env._env.fov, env._env.num_food
    agents = np.asarray(states.agents.position)  # (B, A, 2)
    food = np.asarray(states.food_items.position)  # (B, F, 2)
    seen = np.asarray(raw.obs)[:, :, : 3 * F].reshape(300, env.num_agents, F, 3)  # (y, x, level)
    visible = np.all(np.abs(agents[:, :, None] - food[:, None]) <= fov, axis=-1)  # (B, A, F)
    assert np.all(np.all(seen == [-1, -1, 0], axis=-1) == ~visible)
    # What is seen is where it is, in the coordinates of the agent's window.
    corner = agents - np.minimum(fov, agents)
    relative = food[:, None] - corner[:, :, None]
    assert np.all((seen[..., :2] == relative)[visible])
    levels = np.broadcast_to(np.asarray(states.food_items.level)[:, None], visible.shape)
    assert np.all(seen[..., 2][visible] == levels[visible])
    if env_id == "lbf-10x10-3p-3f":
        assert visible.all()  # the field of view is the whole grid
    else:
        assert 0.05 < visible.mean() < 0.95


@pytest.mark.parametrize("env_id", ["lbf-8x8-2p-2f-coop", "lbf-15x15-4p-3f"])
def test_lbf_coop_tasks_need_every_agent_on_each_food(env_id):
    env = envs.make(env_id)
    states, _ = fast_jit(jax.vmap(env._reset))(jax.random.split(jax.random.PRNGKey(0), 300))
    agent_levels = np.sort(np.asarray(states.agents.level), axis=1)
    food_levels = np.asarray(states.food_items.level)
    assert np.all((agent_levels >= 1) & (agent_levels <= 2))
    cap = agent_levels[:, :3].sum(1, keepdims=True)  # the sum of the three lowest levels
    if env_id.endswith("-coop"):
        assert np.all(food_levels == cap)  # 2 agents: only both together can load a food
    else:
        assert np.all((food_levels >= 1) & (food_levels <= cap)) and np.any(food_levels < cap)


def test_lbf_team_reward_is_the_normalised_food_level_eaten():
    from jumanji.environments.routing.lbf.constants import LOAD, NOOP as LBF_NOOP

    env = envs.make("lbf-2s-8x8-2p-2f-coop")
    step = fast_jit(env.step)
    inner, _ = fast_jit(env._reset)(jax.random.PRNGKey(0))
    level = int(inner.food_items.level[0])  # coop: both food items have the agents' summed level

    def surround(inner, food):
        """Put the agents left and right of `food` (positions made free of other items)."""
        positions = jnp.array([[2, 2], [5, 5]]).at[food].set([2, 2])
        positions = positions.at[1 - food].set([5, 5])
        row, col = positions[food]
        agents = inner.agents.replace(position=jnp.array([[row, col - 1], [row, col + 1]]))
        return inner.replace(agents=agents, food_items=inner.food_items.replace(position=positions))

    state = episode_start(surround(inner, 0))
    state, ts = step(state, jnp.array([LOAD, LBF_NOOP]))  # one agent alone cannot lift it
    np.testing.assert_array_equal(ts.reward, [0.0, 0.0])
    state, ts = step(state, jnp.array([LOAD, LOAD]))
    # Each agent's jumanji reward is its level x food level / (loaders' levels x total food level);
    # the team reward (their sum, to every agent) is food level / total food level = 1/2.
    np.testing.assert_allclose(ts.reward, [0.5, 0.5], rtol=1e-6)
    assert level * 2 == int(jnp.sum(state.inner.food_items.level)) and not bool(ts.done)
    state = state._replace(inner=surround(state.inner, 1))
    state, ts = step(state, jnp.array([LOAD, LOAD]))
    np.testing.assert_allclose(ts.reward, [0.5, 0.5], rtol=1e-6)
    assert bool(ts.terminated) and not bool(ts.truncated)  # all food eaten: the task's own end
    np.testing.assert_allclose(ts.episode_return, 1.0, rtol=1e-6)  # the most an episode returns
    np.testing.assert_allclose(ts.episode_metric, ts.episode_return)
    assert int(ts.episode_length) == 3


# --------------------------------------------------------------------------------------------------
# Connector
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", CONNECTOR_IDS)
def test_connector_settings_follow_the_id(env_id):
    from jumanji.environments.routing.connector.generator import LegacyRandomWalkGenerator

    env = envs.make(env_id)
    grid, _, agents = env_id.removeprefix("connector-").removesuffix("a").split("x")
    grid, agents = int(grid), int(agents)
    assert (env._env.grid_size, env.num_agents) == (grid, agents)
    assert env.time_limit == {5: 25, 7: 49, 10: 100, 15: 225}[grid] == env._env.time_limit
    assert type(env._env._generator) is LegacyRandomWalkGenerator  # v2's task distribution
    # VectorConnectorWrapper's 54 features (2 + 2 + 25 + 25) after Mava's one-hot id; the global
    # state is the agents' 54 features side by side (no id, as in Mava)
    assert env.add_agent_id and env.obs_dim == 54 + agents
    assert env.state_dim == 54 * agents
    assert env.metric_name == "win_rate" and not env.metric_is_return


def mava_vector_view(grid, num_agents):
    """Mava's VectorConnectorWrapper observation (mava/wrappers/jumanji.py), re-derived in numpy
    from the grid alone, step by step as the wrapper computes it: (A, 54) float32.

    But for one step, the scaling of the coordinates, which is the wrapper's own jitted
    `coords / grid[0].size`: XLA turns a division by a constant into a product with its
    reciprocal, 1 ulp off numpy's division for some values (9 / 100), so that Mava under jit and
    numpy differ there, and we compute what Mava's jitted wrapper does."""
    G, fov = grid.shape[0], 2
    scale = jax.jit(lambda coords: coords / (G * G))  # int32 / int: float32, as in the wrapper
    views = []
    for agent in range(num_agents):
        # switch_perspective: the agent's own values become 1, 2, 3.
        shifted = (grid - 1 - 3 * agent) % (3 * num_agents) + 1
        g = np.where(grid >= 1, shifted, grid)
        positions, paths = g % 3 == 2, g % 3 == 1
        targets = (g % 3 == 0) & (g != 0)
        blockers = np.where(positions, 1, np.where(paths, -1, 0))
        combined_targets = np.where(g == 3, 1, np.where(targets, -1, 0))
        # _get_location: argmax of the flattened layer (cell 0 where the layer is empty).
        position = np.array(divmod(int(np.argmax(g == 2)), G))
        target = np.array(divmod(int(np.argmax(g == 3)), G))
        x, y = position  # the slice of the grid padded by fov (with True) starts at the head
        padded_blockers = np.pad(blockers, fov, constant_values=True)[x : x + 5, y : y + 5]
        padded_targets = np.pad(combined_targets, fov, constant_values=True)[x : x + 5, y : y + 5]
        views.append(np.concatenate([
            np.asarray(scale(jnp.asarray(position, jnp.int32))),
            np.asarray(scale(jnp.asarray(target, jnp.int32))),
            padded_blockers.reshape(-1).astype(np.float32),
            padded_targets.reshape(-1).astype(np.float32),
        ]))
    return np.stack(views).astype(np.float32)


def hand_built_connector_state():
    """A 5 x 5 board with 3 agents (agent j's path, head, target: 3j + 1, 3j + 2, 3j + 3):
    agent 0 walked (1,1) -> (0,1) -> (0,0), its target at (2,4); agent 1 walked (3,2) -> (3,1),
    its target at (1,3); agent 2 walked (3,4) -> (4,4) onto its target: connected."""
    from jumanji.environments.routing.connector.types import Agent, State
    from jumanji.environments.routing.connector.utils import get_action_masks

    grid = jnp.array([
        [2, 1, 0, 0, 0],
        [0, 1, 0, 6, 0],
        [0, 0, 0, 0, 3],
        [0, 5, 4, 0, 7],
        [0, 0, 0, 0, 8],
    ], jnp.int32)
    agents = Agent(
        id=jnp.arange(3),
        start=jnp.array([[1, 1], [3, 2], [3, 4]]),
        target=jnp.array([[2, 4], [1, 3], [4, 4]]),
        position=jnp.array([[0, 0], [3, 1], [4, 4]]),
    )
    return State(grid=grid, step_count=jnp.int32(0), agents=agents, key=jax.random.PRNGKey(0),
                 action_mask=get_action_masks(agents, grid))


def test_connector_vector_view_of_a_hand_built_board(connector5):
    env, step, _ = connector5
    inner = hand_built_connector_state()
    o = 1  # off the grid: 1 in both windows (the wrapper pads with True)
    expected = {
        0: (  # head (0,0) in the corner, target (2,4); two window rows and columns off the grid
            [0 / 25, 0 / 25, 2 / 25, 4 / 25],
            [[o, o, o, o, o], [o, o, o, o, o], [o, o, 1, -1, 0], [o, o, 0, -1, 0], [o, o, 0, 0, 0]],
            [[o, o, o, o, o], [o, o, o, o, o], [o, o, 0, 0, 0], [o, o, 0, 0, 0], [o, o, 0, 0, 0]],
        ),
        1: (  # head (3,1), target (1,3) in the window's top-right corner; agent 0's path at (1,1)
            [3 / 25, 1 / 25, 1 / 25, 3 / 25],
            [[o, 0, -1, 0, 0], [o, 0, 0, 0, 0], [o, 0, 1, -1, 0], [o, 0, 0, 0, 0], [o, o, o, o, o]],
            [[o, 0, 0, 0, 1], [o, 0, 0, 0, 0], [o, 0, 0, 0, 0], [o, 0, 0, 0, 0], [o, o, o, o, o]],
        ),
        2: (  # connected: head (4,4) on its target, which reads (0,0); agent 0's target at (2,4)
            [4 / 25, 4 / 25, 0, 0],
            [[0, 0, 0, o, o], [-1, 0, -1, o, o], [0, 0, 1, o, o], [o, o, o, o, o], [o, o, o, o, o]],
            [[0, 0, -1, o, o], [0, 0, 0, o, o], [0, 0, 0, o, o], [o, o, o, o, o], [o, o, o, o, o]],
        ),
    }
    views = np.array([
        np.concatenate([np.float32(c), np.ravel(b), np.ravel(t)]) for c, b, t in expected.values()
    ], np.float32)
    ids = np.eye(3, dtype=np.float32)
    obs, global_state = fast_jit(lambda inner: env._views(env._observe(inner)))(inner)
    # The windows and the ids exactly; the coordinates to the rounding of the division (above).
    for got in (mava_vector_view(np.asarray(inner.grid), 3), obs[:, 3:]):
        np.testing.assert_allclose(got[:, :4], views[:, :4], rtol=2.4e-7, atol=0)  # 1 ulp
        np.testing.assert_array_equal(got[:, 4:], views[:, 4:])
    np.testing.assert_array_equal(obs[:, :3], ids)
    np.testing.assert_array_equal(obs[:, 3:], mava_vector_view(np.asarray(inner.grid), 3))
    state = np.asarray(obs[:, 3:]).reshape(-1)  # Mava tiles it per agent; one copy here
    np.testing.assert_array_equal(global_state, state)
    # The same through the public step: all no-ops leave the board as it is (agents 0 and 1 can
    # still move, so the episode goes on), and the mask is jumanji's.
    state, ts = step(episode_start(inner), jnp.zeros(3, jnp.int32))
    assert not bool(ts.done)
    np.testing.assert_array_equal(ts.obs, obs)
    np.testing.assert_array_equal(ts.global_state, global_state)
    mask = [[1, 0, 0, 1, 0], [1, 1, 0, 1, 1], [1, 0, 0, 0, 0]]  # no-op, up, right, down, left
    np.testing.assert_array_equal(ts.action_mask, np.array(mask, bool))
    np.testing.assert_allclose(ts.reward, [-0.06] * 3, rtol=1e-6)  # two agents not connected


def connector_rollout(env, num_envs, num_steps, seed):
    """Random legal moves: per step the jumanji states reached and the timesteps."""

    @fast_jit
    def run(key):
        state, ts = jax.vmap(env.reset)(jax.random.split(key, num_envs))

        def body(carry, key):
            state, ts = carry
            actions = jax.random.categorical(key, jnp.where(ts.action_mask, 0.0, -jnp.inf))
            state, ts = jax.vmap(env.step)(state, actions)
            return (state, ts), (state.inner.grid, state.inner.agents.connected, ts)

        first = (state.inner.grid, state.inner.agents.connected, ts)
        return first, jax.lax.scan(body, (state, ts), jax.random.split(key, num_steps))[1]

    return jax.tree.map(np.asarray, run(jax.random.PRNGKey(seed)))


@pytest.mark.parametrize("env_id, steps", [("connector-10x10x10a", 12), ("connector-15x15x23a", 6)])
def test_connector_views_are_exactly_mavas_on_the_large_boards(env_id, steps):
    # Resets and a few random steps (float32 scaling by 100 and 225 cells, 10 and 23 agents).
    env = envs.make(env_id)
    N = env.num_agents
    (grids0, _, ts0), (grids, _, ts) = connector_rollout(env, 2, steps, seed=1)
    for b in range(2):
        np.testing.assert_array_equal(ts0.obs[b, :, N:], mava_vector_view(grids0[b], N))
        for t in range(steps):
            np.testing.assert_array_equal(ts.obs[t, b, :, N:], mava_vector_view(grids[t, b], N))
    np.testing.assert_array_equal(ts.obs[..., :N], np.broadcast_to(np.eye(N), ts.obs[..., :N].shape))


def test_connector_views_and_ends_along_random_episodes():
    env = envs.make("connector-7x7x5a")
    N, B, T = 5, 8, 30
    _, (grids, connected, ts) = connector_rollout(env, B, T, seed=0)
    assert np.any(grids % 3 == 1)  # some paths were drawn
    some_connected = False
    for t in range(T):
        for b in range(B):
            if not ts.done[t, b]:  # (on a done step, the views and grid are the next episode's)
                # Still running: some agent is neither connected nor out of legal moves.
                assert np.any(~connected[t, b] & ts.action_mask[t, b, :, 1:].any(-1))
            some_connected |= bool(connected[t, b].any() & ~connected[t, b].all())
            # Every agent's view is its one-hot id, then Mava's view; the global state is the views
            # concatenated (no id).
            views = mava_vector_view(grids[t, b], N)
            np.testing.assert_array_equal(ts.obs[t, b], np.concatenate([np.eye(N), views], 1))
            np.testing.assert_array_equal(ts.global_state[t, b], views.reshape(-1))
    assert some_connected  # (0, 0) targets of connected agents amid the others were checked
    # Random play mostly ends with every agent connected or blocked, long before the time limit,
    # and then (some agents blocked, not connected) it is no win.
    ended = ts.terminated & ~ts.truncated
    assert ended.sum() >= 3 and np.all(ts.episode_length[ended] < env.time_limit)
    assert np.all(ts.episode_metric[ended] == 0.0)


def solved_paths(env, key):
    """Each agent's moves along the path that jumanji's generator walked for the board of `key`."""
    generator = env._env._generator
    solved, agents, _ = generator.generate_board(jax.random.split(key)[1])  # as its __call__ does
    solved = np.asarray(solved)
    moves = {(-1, 0): 1, (0, 1): 2, (1, 0): 3, (0, -1): 4}  # up, right, down, left
    paths = []
    for agent in range(env.num_agents):
        cell = tuple(np.asarray(agents.start[agent]))
        target = tuple(np.asarray(agents.target[agent]))
        mine = {(int(r), int(c)) for r, c in np.argwhere((solved - 1) // 3 == agent)}
        actions, seen = [], {cell}
        while cell != target:
            step = next(m for m in moves if (cell[0] + m[0], cell[1] + m[1]) in mine - seen)
            cell = (cell[0] + step[0], cell[1] + step[1])
            seen.add(cell)
            actions.append(moves[step])
        paths.append(actions)
    return agents, paths


@pytest.fixture(scope="module")
def connector5():
    env = envs.make("connector-5x5x3a")
    return env, fast_jit(env.step), fast_jit(env.reset)


def test_connector_all_agents_connected_is_a_win(connector5):
    env, step, reset = connector5
    key = jax.random.PRNGKey(5)
    state, _ = reset(key)
    agents, paths = solved_paths(env, jax.random.split(key)[1])  # the key `reset` hands `_reset`
    np.testing.assert_array_equal(state.inner.agents.target, agents.target)

    length = max(len(p) for p in paths)
    for t in range(length):
        actions = jnp.array([p[t] if t < len(p) else 0 for p in paths])
        state, ts = step(state, actions)
        connected = [len(p) <= t + 1 for p in paths]
        # Team reward: +1 for each agent connecting now, -0.03 for each not connected before.
        expected = sum(len(p) == t + 1 for p in paths) - 0.03 * sum(len(p) > t for p in paths)
        np.testing.assert_allclose(ts.reward, [expected] * 3, rtol=1e-5, atol=1e-6)
        assert bool(ts.done) == all(connected)
    assert bool(ts.terminated) and not bool(ts.truncated) and int(ts.episode_length) == length
    assert float(ts.episode_metric) == 1.0
    np.testing.assert_allclose(ts.episode_return, sum(1 - 0.03 * len(p) for p in paths), rtol=1e-5)


def test_connector_time_limit_truncates_and_only_a_full_connection_wins(connector5):
    env, step, reset = connector5
    key = jax.random.PRNGKey(6)
    state, _ = reset(key)
    _, paths = solved_paths(env, jax.random.split(key)[1])
    # Agents 0 and 1 walk to their targets, agent 2 waits: 2 of 3 connected at the time limit.
    for t in range(25):
        actions = jnp.array([p[t] if t < len(p) else 0 for p in paths[:2]] + [0])
        state, ts = step(state, actions)
        assert bool(ts.done) == (t == 24)
    assert bool(ts.truncated) and not bool(ts.terminated) and int(ts.episode_length) == 25
    assert float(ts.episode_metric) == 0.0  # not a win, though most agents connected
    expected = sum(1 - 0.03 * len(p) for p in paths[:2]) - 0.03 * 25
    np.testing.assert_allclose(ts.episode_return, expected, rtol=1e-5)
