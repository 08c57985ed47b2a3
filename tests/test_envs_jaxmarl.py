"""SMAX and MPE (jaxmarl): what the adapters add on top of jaxmarl, checked against jaxmarl itself.

The generic interface (shapes, masks, auto-reset, flags, bookkeeping) is tested in test_envs.py.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from helpers import fast_jit

# (allies, enemies) per map, from SMAC / SMACv2 (the SMACv2 maps are symmetric)
SMAX_UNITS = {
    "2s3z": (5, 5), "3s5z": (8, 8), "3s5z_vs_3s6z": (8, 9), "3s_vs_5z": (3, 5), "6h_vs_8z": (6, 8),
    "10m_vs_11m": (10, 11), "5m_vs_6m": (5, 6), "smacv2_5_units": (5, 5),
    "smacv2_10_units": (10, 10), "27m_vs_30m": (27, 30),
}
STOP, EAST, FIRST_ATTACK = 4, 1, 5  # SMAX's discrete actions: 0-3 move N/E/S/W, 4 stop, 5+j attack


def legal_random(key, mask):
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)


def assert_same(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.floating):
        np.testing.assert_allclose(a, b, atol=1e-5)
    else:
        np.testing.assert_array_equal(a, b)


def focus_fire(mask):
    """Attack the lowest-numbered enemy in range, else walk east (towards the enemy's side)."""
    attacks = mask[..., FIRST_ATTACK:]
    target = jnp.argmax(attacks, axis=-1) + FIRST_ATTACK
    return jnp.where(attacks.any(-1), target, jnp.where(mask[..., EAST], EAST, STOP)).astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# SMAX
# --------------------------------------------------------------------------------------------------
def test_smax_maps_have_their_units_actions_and_state_size():
    for task, (allies, enemies) in SMAX_UNITS.items():
        env = envs.make(f"smax-{task}")
        units = allies + enemies
        assert (env.num_agents, env.num_enemies) == (allies, enemies), task
        assert env.num_actions == 5 + enemies and env.action_dim == 1 and not env.continuous
        # jaxmarl's world state: 10 features per unit (health, x, y, cooldown, 6 type bits), then
        # every unit's team and type (no agent id, as in Mava)
        assert env.state_dim == 10 * units + 2 * units, task
        assert env.obs_dim == 13 * (units - 1) + 10 + allies, task  # 13 features per other unit
        assert env.time_limit == 101 and env.metric_name == "win_rate" and not env.metric_is_return


def test_smax_steps_exactly_as_jaxmarl_heuristic_enemy_smax():
    """The adapter (which reuses each step's unit views for the enemies' next move) must reproduce
    the HeuristicEnemySMAX it wraps (jaxmarl's, with the paper's rules) reset/step_env given the
    same keys and actions."""
    env = envs.make("smax-2s3z")
    jm = env._env
    allies = jm.agents

    def run(key):
        key, reset_key = jax.random.split(key)
        inner, raw = env._reset(reset_key)
        obs, jm_state = jm.reset(reset_key)

        def body(carry, k):
            inner, raw, jm_state = carry
            act_key, step_key = jax.random.split(k)
            actions = legal_random(act_key, raw.action_mask)
            inner, raw, reward, terminated, _ = env._step(step_key, inner, actions)
            obs, jm_state, jm_reward, jm_dones, _ = jm.step_env(
                step_key, jm_state, {a: actions[i] for i, a in enumerate(allies)}
            )
            avail = jm.get_avail_actions(jm_state)
            ours = (raw.obs, raw.state, raw.action_mask, reward, terminated, inner.env)
            theirs = (
                jnp.stack([obs[a] for a in allies]), obs["world_state"],
                jnp.stack([avail[a] for a in allies]).astype(bool),
                jnp.stack([jm_reward[a] for a in allies]), jm_dones["__all__"], jm_state,
            )
            return (inner, raw, jm_state), (ours, theirs)

        first = (raw.obs, jnp.stack([obs[a] for a in allies]), raw.state, obs["world_state"])
        return first, jax.lax.scan(body, (inner, raw, jm_state), jax.random.split(key, 70))[1]

    first, (ours, theirs) = jax.device_get(fast_jit(run)(jax.random.PRNGKey(3)))
    np.testing.assert_allclose(first[0], first[1], atol=1e-6)
    np.testing.assert_allclose(first[2], first[3], atol=1e-6)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        assert_same(a, b)
    terminated = ours[4]
    assert terminated.any(), "the random allies should have lost within 70 steps"


FORK_TRAJECTORIES = os.path.join(os.path.dirname(__file__), "data", "smax_fork_trajectories.npz")


def replay_smax(env, battle):
    """Play the recorded keys and actions of one battle through the adapter's `_reset`/`_step`:
    -> (first views, state, mask) and, per step, (views, state, mask, reward, terminated)."""

    def run(reset_key, step_keys, actions):
        inner, raw = env._reset(reset_key)

        def body(inner, xs):
            key, action = xs
            inner, raw, reward, terminated, _ = env._step(key, inner, action)
            return inner, (raw.obs, raw.state, raw.action_mask, reward, terminated)

        first = (raw.obs, raw.state, raw.action_mask)
        return first, jax.lax.scan(body, inner, (step_keys, actions))[1]

    keys = (battle["reset_key"], battle["step_key"], battle["action"])
    return jax.device_get(fast_jit(run)(*(jnp.asarray(k) for k in keys)))


@pytest.mark.parametrize("task", ["2s3z", "3s_vs_5z", "smacv2_5_units"])
def test_smax_steps_like_the_papers_jaxmarl(task):
    """Battles recorded from the jaxmarl fork that the paper's runs used (tests/data/
    record_smax_fork.py) replay exactly: views, world state, masks, rewards and the battle's end.
    jaxmarl 0.2.0 unpatched fails this from the first step on which a unit's cooldown or attack
    shows (it scales them), and later in positions (its dead units neither move nor collide)."""
    data = np.load(FORK_TRAJECTORIES)
    battle = {k.split("__", 1)[1]: data[k] for k in data.files if k.startswith(f"{task}__")}
    env = envs.make(f"smax-{task}")
    first, (obs, state, mask, reward, terminated) = replay_smax(env, battle)
    for ours, theirs in zip(first, (battle["obs0"], battle["state0"], battle["mask0"])):
        assert_same(ours, theirs)
    # the recorded allies only ever chose legal actions: the masks agree step by step
    np.testing.assert_array_equal(mask, battle["mask"])
    np.testing.assert_allclose(obs, battle["obs"], atol=1e-4)
    np.testing.assert_allclose(state, battle["state"], atol=1e-4)
    np.testing.assert_allclose(reward, battle["reward"], atol=1e-5)
    np.testing.assert_array_equal(terminated, battle["done"])  # no time-out within 60 steps
    world = battle["state"].reshape(len(reward), -1)
    units = world.shape[-1] // 12
    dead = world[:, : 10 * units].reshape(len(reward), units, 10)[..., 0] == 0
    # units of both sides died, so the rules for the dead were exercised
    assert dead[-1, : env.num_agents].any() and dead[-1, env.num_agents :].any()


@pytest.fixture(scope="module")
def smax_first_episodes():
    """64 SMAX 2s3z battles played to their end by a focus-fire policy, with the auto-reset turned
    off so that the terminal state can be inspected. Per step: (timestep, state after the step)."""
    env = envs.make("smax-2s3z")
    env._reset_where = lambda any_done, done, key, current: current  # keep the terminal state
    reset, step = fast_jit(jax.vmap(env.reset)), fast_jit(jax.vmap(env.step))
    state, ts = reset(jax.random.split(jax.random.PRNGKey(0), 64))
    first = ts
    history = []
    ended = np.zeros(64, bool)
    for _ in range(env.time_limit):
        state, ts = step(state, focus_fire(ts.action_mask))
        history.append(jax.device_get((ts, state.inner.env.state)))
        ended |= np.asarray(ts.done)
        if ended.all():
            break
    return env, reset, step, first, history


def test_smax_win_metric_is_one_exactly_when_every_enemy_died_and_an_ally_lived(smax_first_episodes):
    env, _, _, _, history = smax_first_episodes
    A = env.num_agents
    ended = np.zeros(64, bool)
    wins = losses = 0
    for ts, sim in history:
        end = ts.done & ~ended  # the first episode of each env ends here
        ended |= ts.done
        if not end.any():
            continue
        assert ts.terminated[end].all() and not ts.truncated[end].any()
        allies_alive = sim.unit_alive[:, :A].any(-1)
        enemies_alive = sim.unit_alive[:, A:].any(-1)
        assert (~allies_alive | ~enemies_alive)[end].all()  # a side was wiped out
        won = ~enemies_alive & allies_alive
        np.testing.assert_array_equal(ts.episode_metric[end], won[end].astype(np.float32))
        # Mava's SmaxWrapper reads the win off jaxmarl's reward: the +1 bonus on the last step
        np.testing.assert_array_equal(ts.episode_metric[end], (ts.reward[end] >= 1.0).all(-1))
        # every ally receives the same team reward
        np.testing.assert_array_equal(ts.reward[end], np.repeat(ts.reward[end][:, :1], A, -1))
        wins += int(won[end].sum())
        losses += int((~won[end]).sum())
        not_ended = ~ts.done
        assert (ts.episode_metric[not_ended] == 0).all()
    assert ended.all()
    # both outcomes occur (5 wins of 64 with this seed)
    assert wins >= 1 and losses >= 1, (wins, losses)


def test_smax_action_mask_allows_exactly_the_possible_actions(smax_first_episodes):
    env, _, _, _, history = smax_first_episodes
    A = env.num_agents
    ranges = np.asarray(env._sim.unit_type_attack_ranges)
    checked_attacks = 0
    ended = np.zeros(64, bool)
    for ts, sim in history:
        live = ~(ended | ts.done)  # the mask describes this state (not a reset one)
        ended |= ts.done
        mask = ts.action_mask[live]
        alive = sim.unit_alive[live]
        pos = sim.unit_positions[live]
        types = sim.unit_types[live]
        ally_alive = alive[:, :A]
        assert mask[..., STOP].all()  # stopping is always allowed
        # dead allies may only stop
        np.testing.assert_array_equal(mask[..., :STOP], np.repeat(ally_alive[..., None], 4, -1))
        # ally i may attack enemy j iff both live and j is within i's attack range
        dist = np.linalg.norm(pos[:, :A, None] - pos[:, None, A:], axis=-1)  # (E, allies, enemies)
        in_range = dist < ranges[types[:, :A]][..., None]
        expected = ally_alive[..., None] & alive[:, None, A:] & in_range
        np.testing.assert_array_equal(mask[..., FIRST_ATTACK:], expected)
        checked_attacks += int(expected.sum())
    assert checked_attacks > 100  # the battles did come within range


def test_smax_fixed_map_units_and_start_positions(smax_first_episodes):
    env, _, _, first, _ = smax_first_episodes
    U, A = env.num_agents + env.num_enemies, env.num_agents
    world = np.asarray(first.global_state)  # (envs, world state)
    types, teams = world[:, -U:], world[:, -2 * U : -U]
    # 2s3z: 2 stalkers (type 2) and 3 zealots (type 3) a side
    np.testing.assert_array_equal(types, np.broadcast_to([2, 2, 3, 3, 3] * 2, types.shape))
    np.testing.assert_array_equal(teams, np.broadcast_to([0] * 5 + [1] * 5, teams.shape))
    x = world[:, : 10 * U].reshape(-1, U, 10)[..., 1]
    assert (np.abs(x[:, :A] - 8) < 3).all() and (np.abs(x[:, A:] - 24) < 3).all()
    np.testing.assert_array_equal(first.action_mask[..., FIRST_ATTACK:], False)  # out of range
    assert first.action_mask[..., :FIRST_ATTACK].all()


def test_smax_time_limit_is_jaxmarls_101st_step_and_a_truncation(smax_first_episodes):
    env, reset, step, _, _ = smax_first_episodes
    state, _ = reset(jax.random.split(jax.random.PRNGKey(1), 64))
    actions = jnp.full((64, env.num_agents), STOP, jnp.int32)
    for count, expect_cut in ((99, False), (100, True)):
        sim = state.inner.env.state.replace(step=jnp.full((64,), count))
        crafted = state._replace(
            step_count=jnp.full((64,), count, jnp.int32),
            inner=state.inner._replace(env=state.inner.env.replace(state=sim)),
        )
        after, ts = step(crafted, actions)
        # the battles have not started (the armies are out of range), so nothing terminates
        assert not ts.terminated.any()
        assert (np.asarray(ts.truncated) == expect_cut).all()
        assert (np.asarray(ts.done) == expect_cut).all()
        # jaxmarl's own time-out (its `done`) falls on the same step
        assert (np.asarray(after.inner.env.state.done) == expect_cut).all()
        if expect_cut:
            assert (ts.episode_length == 101).all() and (ts.episode_metric == 0).all()


def test_smacv2_maps_draw_units_and_positions_every_episode():
    env = envs.make("smax-smacv2_5_units")
    U, A = 10, 5
    _, ts = fast_jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 32))
    world = np.asarray(ts.global_state)
    types = world[:, -U:].astype(int)
    assert ((types >= 0) & (types < 6)).all()
    assert len({tuple(t) for t in types[:, :A]}) > 16  # the allies' unit types vary
    np.testing.assert_array_equal(types[:, A:], types[:, :A])  # jaxmarl: the enemies mirror them
    x = world[:, : 10 * U].reshape(-1, U, 10)[..., 1]
    assert (np.abs(x[:, :A] - 8) > 3).any()  # not SMAC's fixed start
    assert len({tuple(np.round(r, 3)) for r in x}) == 32


def test_sable_step_lag_is_one_on_the_jaxmarl_families_only():
    # Mava's jaxmarl wrapper stamps an observation with the step count before the step
    assert envs.make("smax-2s3z").sable_step_lag == 1
    assert envs.make("mpe-simple_spread_3ag").sable_step_lag == 1
    assert envs.make("rware-tiny-2ag").sable_step_lag == 0
    assert envs.make("coordsum-3x10").sable_step_lag == 0
    # what the guided scripts hand Sable: 0, 0, 1, 2, ... over an MPE episode (0, 1, 2, ... on RWARE)
    for env_id, expected in (("mpe-simple_spread_3ag", [0, 0, 1, 2]), ("rware-tiny-2ag", [0, 1, 2, 3])):
        env = envs.make(env_id)
        state, ts = env.reset(jax.random.PRNGKey(0))
        seen = [int(env.position(state))]
        for _ in range(3):
            state, ts = env.step(state, jnp.zeros((env.num_agents, env.action_dim)) if env.continuous
                                 else jnp.zeros(env.num_agents, jnp.int32))
            seen.append(int(env.position(state)))
        assert seen == expected, env_id


# --------------------------------------------------------------------------------------------------
# MPE simple_spread
# --------------------------------------------------------------------------------------------------
def test_mpe_ids_agents_landmarks_and_action_box():
    for n in (3, 5, 10):
        env = envs.make(f"mpe-simple_spread_{n}ag")
        assert env.num_agents == n and env._env.num_landmarks == n and env._env.local_ratio == 0.5
        assert env.continuous and env.action_dim == env.num_actions == 5
        assert (env.action_low, env.action_high) == (-1.0, 1.0)
        # own velocity and position, landmarks, other agents' positions and (silent) messages
        assert env.obs_dim == 4 + 2 * n + 2 * (n - 1) + 2 * (n - 1) + n
        assert env.state_dim == n * (env.obs_dim - n)  # all agents' views (without ids), concatenated
        assert env.time_limit == 26 and env.metric_is_return


def test_mpe_steps_exactly_as_jaxmarl_and_rewards_each_agent_its_own_reward():
    env = envs.make("mpe-simple_spread_3ag")
    jm = env._env

    def run(key):
        key, reset_key = jax.random.split(key)
        inner, raw = env._reset(reset_key)
        _, jm_state = jm.reset(reset_key)

        def body(carry, k):
            inner, jm_state = carry
            act_key, step_key = jax.random.split(k)
            actions = jax.random.uniform(act_key, (3, 5))  # inside jaxmarl's box: no clipping
            inner, raw, reward, terminated, _ = env._step(step_key, inner, actions)
            obs, jm_state, jm_reward, _, _ = jm.step_env(
                step_key, jm_state, {a: actions[i] for i, a in enumerate(jm.agents)}
            )
            views = jnp.stack([obs[a] for a in jm.agents])
            out = (raw.obs, views, raw.state, views.reshape(-1), reward,
                   jnp.stack([jm_reward[a] for a in jm.agents]), raw.action_mask, terminated)
            return (inner, jm_state), out

        return jax.lax.scan(body, (inner, jm_state), jax.random.split(key, 26))[1]

    obs, jm_obs, state, jm_state, reward, jm_reward, mask, terminated = jax.device_get(
        fast_jit(run)(jax.random.PRNGKey(0))
    )
    np.testing.assert_allclose(obs, jm_obs, atol=1e-6)
    np.testing.assert_allclose(state, jm_state, atol=1e-6)  # global state: the views concatenated
    np.testing.assert_allclose(reward, jm_reward, atol=1e-6)  # Mava: jaxmarl's per-agent rewards
    assert mask.all() and not terminated.any()


def test_mpe_reward_mixes_own_collisions_and_landmark_coverage_half_and_half():
    env = envs.make("mpe-simple_spread_3ag")
    state, ts = env.reset(jax.random.PRNGKey(4))
    inner = state.inner
    # put agent 1 on top of agent 0 (closer than the two radii, 0.15 each); agent 2 far away.
    # Positions only change by the velocity of the step before, which is zero after a reset.
    pos = inner.p_pos.at[1].set(inner.p_pos[0] + jnp.array([0.1, 0.0]))
    pos = pos.at[2].set(inner.p_pos[0] + jnp.array([1.0, 1.0]))
    state = state._replace(inner=inner.replace(p_pos=pos))
    _, ts = fast_jit(env.step)(state, jnp.zeros((3, 5)))
    obs = np.asarray(ts.obs)[:, 3:]  # after the one-hot ids
    agents = obs[:, 2:4]  # own positions
    landmarks = agents[0] + obs[0, 4:10].reshape(3, 2)  # landmarks relative to agent 0
    coverage = -np.linalg.norm(landmarks[:, None] - agents[None], axis=-1).min(1).sum()
    collisions = np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(ts.reward, 0.5 * -collisions + 0.5 * coverage, rtol=1e-5)


def test_mpe_episodes_are_cut_at_26_steps_never_terminated():
    env = envs.make("mpe-simple_spread_3ag")

    def run(key):
        state, ts = jax.vmap(env.reset)(jax.random.split(key, 4))

        def body(state, k):
            actions = jax.random.uniform(k, (4, 3, 5), minval=-1.0, maxval=1.0)
            state, ts = jax.vmap(env.step)(state, actions)
            return state, (ts.done, ts.terminated, ts.truncated, ts.episode_length)

        return jax.lax.scan(body, state, jax.random.split(key, 80))[1]

    done, terminated, truncated, length = jax.device_get(fast_jit(run)(jax.random.PRNGKey(0)))
    steps = np.arange(1, 81)
    np.testing.assert_array_equal(done, np.broadcast_to((steps % 26 == 0)[:, None], done.shape))
    np.testing.assert_array_equal(truncated, done)
    assert not terminated.any()
    assert (length[done] == 26).all()


def test_mpe_actions_are_clipped_to_minus_one_one_and_minus_one_acts():
    env = envs.make("mpe-simple_spread_3ag")
    step = fast_jit(jax.vmap(env.step, in_axes=(None, 0)))
    state, _ = env.reset(jax.random.PRNGKey(0))
    push = np.zeros((4, 3, 5), np.float32)
    push[1, :, 1] = -1.0  # "left" at -1: a push to the right (jaxmarl: force x = right - left)
    push[2, :, 1] = -7.0  # beyond the box: the same as -1
    push[3, :, 2] = 1.0  # "right" at +1: the same push
    _, ts = step(state, jnp.asarray(push))
    velocity_x = np.asarray(ts.obs[:, :, 3])  # the first feature after the 3 one-hot ids
    np.testing.assert_allclose(velocity_x[2], velocity_x[1], atol=1e-6)
    np.testing.assert_allclose(velocity_x[3], velocity_x[1], atol=1e-6)
    assert (velocity_x[1] > velocity_x[0] + 0.3).all()
