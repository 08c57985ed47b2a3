"""The shared environment interface: every id, and one task per family thoroughly under jit + vmap.

Family-specific semantics live in test_envs_jumanji.py and test_envs_jaxmarl.py; CoordSum, which
this project wrote, has its rules checked here against a plain-Python reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from helpers import fast_jit

ONE_PER_FAMILY = [
    "coordsum-3x10-clock",
    "rware-tiny-4ag",
    "lbf-8x8-2p-2f-coop",
    "connector-5x5x3a",
    "smax-3s5z",
    "mpe-simple_spread_3ag",
]


def random_actions(env, key, action_mask):
    """Uniform over the legal actions (discrete) or over the box (continuous); batched over envs."""
    if env.continuous:
        shape = action_mask.shape[:-1] + (env.action_dim,)
        return jax.random.uniform(key, shape, minval=env.action_low, maxval=env.action_high)
    logits = jnp.where(action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def rollout(env, num_envs, num_steps, seed=0):
    """Reset `num_envs` envs and step them `num_steps` times with random legal actions, jitted."""

    def run(key):
        reset_key, key = jax.random.split(key)
        state, first = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))

        def body(carry, step_key):
            state, ts = carry
            actions = random_actions(env, step_key, ts.action_mask)
            state, next_ts = jax.vmap(env.step)(state, actions)
            return (state, next_ts), (ts, actions)

        (_, last), (inputs, actions) = jax.lax.scan(body, (state, first), jax.random.split(key, num_steps))
        return first, inputs, actions, last

    return fast_jit(run)(jax.random.PRNGKey(seed))


def test_ids_are_the_papers_43_tasks_plus_the_released_coordsum_variants():
    assert len(envs.ENV_IDS) == len(set(envs.ENV_IDS)) == 47
    families = [i.split("-")[0] for i in envs.ENV_IDS]
    assert {f: families.count(f) for f in set(families)} == {
        "coordsum": 8, "rware": 15, "lbf": 7, "connector": 4, "smax": 10, "mpe": 3,
    }


# Stepped for real (compiled): the thoroughly tested task of each family and its largest; every other id is
# traced (shapes and dtypes), which catches what a task's sizes can break without compiling 47 programs.
STEPPED = set(ONE_PER_FAMILY[1:]) | {"coordsum-3x10", "coordsum-8x15", "rware-large-8ag", "lbf-15x15-4p-5f",
                                     "connector-15x15x23a", "smax-27m_vs_30m", "mpe-simple_spread_10ag"}


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_every_id_constructs_resets_and_steps(env_id):
    env = envs.make(env_id)
    assert env.env_id == env_id and env.num_agents >= 2

    def reset_and_step(key):
        state, ts = env.reset(key)
        actions = random_actions(env, key, ts.action_mask)
        return ts, env.step(state, actions)[1]

    run = fast_jit(reset_and_step) if env_id in STEPPED else lambda key: jax.eval_shape(reset_and_step, key)
    first, second = run(jax.random.PRNGKey(0))
    A = env.num_agents
    for ts in (first, second):
        assert ts.obs.shape == (A, env.obs_dim) and ts.obs.dtype == jnp.float32
        assert ts.global_state.shape == (env.state_dim,) and ts.global_state.dtype == jnp.float32
        assert ts.action_mask.shape == (A, env.num_actions) and ts.action_mask.dtype == jnp.bool_
        assert ts.reward.shape == (A,) and ts.reward.dtype == jnp.float32
    if env_id in STEPPED:
        for ts in (first, second):
            assert np.all(np.isfinite(ts.obs)) and np.all(np.isfinite(ts.global_state))
        assert bool(first.reset) and not bool(first.done) and not bool(second.reset)


def test_the_stepped_ids_are_ids():
    assert STEPPED <= set(envs.ENV_IDS) and len(STEPPED) == 12


def test_unknown_id_lists_the_valid_ids_closest_first():
    with pytest.raises(envs.UnknownEnvError) as err:
        envs.make("rware-tiny-4agg")
    message = str(err.value)
    assert "'rware-tiny-4agg'" in message
    listed = message.split("closest first: ")[1].split(", ")
    assert listed[0] == "rware-tiny-4ag" and sorted(listed) == sorted(envs.ENV_IDS)
    with pytest.raises(ValueError):  # UnknownEnvError is a ValueError for callers that catch that
        envs.make("")


@pytest.mark.parametrize("env_id", ONE_PER_FAMILY)
def test_family_under_jit_and_vmap(env_id):
    env = envs.make(env_id)
    E = 64
    T = env.time_limit + 30  # every env finishes at least one episode
    first, ts, actions, last = jax.device_get(rollout(env, E, T))
    A = env.num_agents

    # shapes and dtypes, time-major with explicit env and agent axes
    assert ts.obs.shape == (T, E, A, env.obs_dim) and ts.obs.dtype == np.float32
    assert ts.global_state.shape == (T, E, env.state_dim)  # one state per env: every agent's the same
    assert ts.action_mask.shape == (T, E, A, env.num_actions) and ts.action_mask.dtype == np.bool_
    assert ts.reward.shape == (T, E, A) and ts.done.shape == (T, E)
    for flag in (ts.reset, ts.done, ts.terminated, ts.truncated):
        assert flag.dtype == np.bool_

    # masks: every agent always has a legal action, and the masked random policy only took legal ones
    assert ts.action_mask.any(-1).all()
    if not env.continuous:
        taken = np.take_along_axis(ts.action_mask, actions[..., None].astype(int), -1)[..., 0]
        assert taken.all()
    else:
        assert actions.shape == (T, E, A, env.action_dim)

    # the one-hot agent id opens each agent's observation (as Mava's AgentIDWrapper puts it); the
    # global state carries none (as in Mava): one per env, the same for every agent
    eye = np.eye(A, dtype=np.float32)
    if env.add_agent_id:
        np.testing.assert_array_equal(ts.obs[..., :A], np.broadcast_to(eye, (T, E, A, A)))

    # flags: the input at t starts an episode exactly when the step before ended one
    dones = np.concatenate([ts.done[1:], last.done[None]], 0)  # dones[t]: the step taken from ts[t]
    assert ts.reset[0].all()
    np.testing.assert_array_equal(ts.reset[1:], dones[:-1])
    np.testing.assert_array_equal(dones, ts.done[1:].tolist() + [last.done.tolist()])
    np.testing.assert_array_equal(ts.done, ts.terminated | ts.truncated)
    assert not (ts.terminated & ts.truncated).any()
    assert dones.any(0).all(), "every env should have finished an episode"

    # bookkeeping: replay the rollout in Python and compare return, length and metric at each end
    rewards = np.concatenate([ts.reward[1:], last.reward[None]], 0)  # rewards[t]: of the step from ts[t]
    outputs = jax.tree_util.tree_map(lambda x, y: np.concatenate([x[1:], y[None]], 0), ts, last)
    running_return = np.zeros(E)
    running_length = np.zeros(E, int)
    for t in range(T):
        running_return += rewards[t].mean(-1)
        running_length += 1
        d = dones[t]
        np.testing.assert_allclose(outputs.episode_return[t][d], running_return[d], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(outputs.episode_length[t][d], running_length[d])
        assert (outputs.episode_length[t][d] <= env.time_limit).all()
        # truncated exactly at the time limit, unless the task itself ended on that step
        at_limit = (running_length >= env.time_limit) & ~outputs.terminated[t]
        np.testing.assert_array_equal(outputs.truncated[t][d], at_limit[d])
        if env.metric_is_return:
            np.testing.assert_allclose(outputs.episode_metric[t][d], running_return[d], rtol=1e-5)
        # outside episode ends the episode fields are zero, so a sum over a rollout counts ends only
        assert (outputs.episode_return[t][~d] == 0).all() and (outputs.episode_metric[t][~d] == 0).all()
        running_return[d] = 0.0
        running_length[d] = 0

    # auto-reset: the observation returned with a done is a first observation, equal in law to reset's
    # (checked here on the step count of CoordSum's clock variant; other families test it in their files)
    if env.family == "coordsum" and env.clock:
        np.testing.assert_array_equal(outputs.obs[..., -1][dones], 0.0)


# --------------------------------------------------------------------------------------------------
# CoordSum rules against a plain-Python reference
# --------------------------------------------------------------------------------------------------
def reference_coordsum_rewards(targets, actions, num_actions):
    """Appendix B in plain Python: one episode; targets (T,), actions (T, N) -> rewards (T,). The
    history rows are the released env's: one per target, targets >= num_actions - 1 sharing the last
    (which only the -30/-50/... variants reach)."""
    history = {}  # history row -> counts of agent 0's actions for it
    rewards = []
    for target, acts in zip(targets, actions):
        counts = history.setdefault(min(int(target), num_actions - 1), [0] * num_actions)
        best = max(counts)
        guess = counts.index(best)  # the smallest action among the most frequent; 0 when empty
        if sum(acts) == target:
            rewards.append(1.0 if guess == acts[0] else 2.0)
        else:
            rewards.append(0.0)
        counts[int(acts[0])] += 1
    return np.array(rewards)


def scripted_coordsum(env_id, policy, num_steps, seed=0):
    """Step one CoordSum env with `policy(key, target) -> actions`, recording targets and rewards."""
    env = envs.make(env_id)

    def run(key):
        state, ts = env.reset(key)

        def body(state, step_key):
            target = state.inner.target
            actions = policy(step_key, target, env)
            state, ts = env.step(state, actions)
            return state, (target, actions, ts)

        return jax.lax.scan(body, state, jax.random.split(key, num_steps))[1]

    return env, jax.device_get(fast_jit(run)(jax.random.PRNGKey(seed)))


def hit_the_target_often(key, target, env):
    """Agent 0 picks at random among a few values; the others complete the sum when they can."""
    k0, k1 = jax.random.split(key)
    a0 = jax.random.randint(k0, (), 0, jnp.minimum(3, env.num_actions))
    rest = target - a0
    per_agent = jnp.clip(rest // (env.num_agents - 1), 0, env.num_actions - 1)
    others = jnp.full((env.num_agents - 1,), per_agent)
    last = jnp.clip(rest - per_agent * (env.num_agents - 2), 0, env.num_actions - 1)
    others = others.at[-1].set(last)
    miss = jax.random.bernoulli(k1, 0.2)  # sometimes miss on purpose
    others = jnp.where(miss, (others + 1) % env.num_actions, others)
    return jnp.concatenate([a0[None], others]).astype(jnp.int32)


@pytest.mark.parametrize("env_id", ["coordsum-3x10", "coordsum-5x20", "coordsum-3x10-30"])
def test_coordsum_rewards_match_the_reference(env_id):
    env, (targets, actions, ts) = scripted_coordsum(env_id, hit_the_target_often, 300)
    rewards = ts.reward
    assert (rewards == rewards[:, :1]).all(), "every agent receives the same team reward"
    episodes = [slice(0, 100), slice(100, 200), slice(200, 300)]
    for ep in episodes:
        expected = reference_coordsum_rewards(targets[ep], actions[ep], env.num_actions)
        np.testing.assert_array_equal(rewards[ep, 0], expected)
        assert set(np.unique(expected)) == {0.0, 1.0, 2.0}, "the script exercises all three rewards"
    # exactly 100 steps, a termination (not a truncation), return summed over the episode
    np.testing.assert_array_equal(np.nonzero(ts.done)[0], [99, 199, 299])
    assert ts.terminated[ts.done].all() and not ts.truncated.any()
    np.testing.assert_allclose(ts.episode_return[ts.done], [rewards[ep, 0].sum() for ep in episodes])
    # targets are uniform over 0..M-1 (M = num_actions, or the variant's -M)
    num_targets = int(env_id.split("-")[2]) if env_id.count("-") == 2 else env.num_actions
    assert targets.min() >= 0 and targets.max() == num_targets - 1


def test_coordsum_guesser_by_hand():
    """The guesser: no history -> 0; most frequent for *this* target; ties -> smallest action."""
    targets = [6, 6, 6, 6, 6, 5, 6]
    actions = [
        [0, 3, 3],  # no history for 6: guess 0, agent 0 played 0 -> hit -> 1
        [2, 2, 2],  # history {0:1}: guess 0, agent 0 played 2 -> miss -> 2
        [2, 4, 0],  # history {0:1, 2:1}: tie -> guess 0 (smallest), played 2 -> 2
        [2, 1, 3],  # history {0:1, 2:2}: guess 2 -> hit -> 1
        [1, 1, 1],  # sum 3 != 6 -> 0 whatever the guess
        [3, 1, 1],  # target 5 has its own history: empty -> guess 0, played 3 -> 2
        [1, 2, 3],  # history for 6 {0:1, 2:2, 1:1}: guess 2, played 1 -> 2
    ]
    np.testing.assert_array_equal(
        reference_coordsum_rewards(targets, actions, 10), [1, 2, 2, 1, 0, 2, 2]
    )
    # and the environment agrees on the same sequence, its targets forced through the state
    env = envs.make("coordsum-3x10")
    state, _ = env.reset(jax.random.PRNGKey(0))
    got = []
    for target, acts in zip(targets, actions):
        state = state._replace(inner=state.inner._replace(target=jnp.int32(target)))
        state, ts = env.step(state, jnp.array(acts, jnp.int32))
        got.append(float(ts.reward[0]))
    assert got == [1, 2, 2, 1, 0, 2, 2]


def test_coordsum_variant_targets_above_the_actions_share_one_history_row():
    """coordsum-3x10-30 as the released env: its history has 10 rows indexed by the target, so 12
    and 25 read the row of 9; agent 0's 7 for target 12 is the guess for target 25."""
    env = envs.make("coordsum-3x10-30")
    state, _ = env.reset(jax.random.PRNGKey(0))
    got = []
    for target, acts in zip([12, 25], [[7, 3, 2], [7, 9, 9]]):
        state = state._replace(inner=state.inner._replace(target=jnp.int32(target)))
        state, ts = env.step(state, jnp.array(acts, jnp.int32))
        got.append(float(ts.reward[0]))
    assert got == [2.0, 1.0]  # one row per target would give [2, 2]


def test_coordsum_observation_is_the_released_one_the_target_alone():
    """As mava/coordsum/env.py and CoordSumWrapper: each agent sees its id and the raw target; the
    global state is the agents' observations side by side; no agent sees the step count."""
    env, (targets, actions, ts) = scripted_coordsum("coordsum-3x10", hit_the_target_often, 150)
    # ts[t] is the observation after step t: the id, then the next target
    assert env.obs_dim == 3 + 1 and env.state_dim == 3
    np.testing.assert_array_equal(ts.obs[:, :, :3], np.broadcast_to(np.eye(3), (150, 3, 3)))
    np.testing.assert_array_equal(ts.obs[:-1, :, 3], np.broadcast_to(targets[1:, None], (149, 3)))
    np.testing.assert_array_equal(ts.global_state[:-1], np.broadcast_to(targets[1:, None], (149, 3)))


def test_coordsum_clock_variant_adds_the_step_count():
    env, (targets, actions, ts) = scripted_coordsum("coordsum-3x10-clock", hit_the_target_often, 150)
    # the step count after step t is (t + 1) % 100, divided by the episode length
    assert env.obs_dim == 3 + 2 and env.state_dim == 3 * 2
    np.testing.assert_array_equal(ts.obs[:-1, :, 3], np.broadcast_to(targets[1:, None], (149, 3)))
    np.testing.assert_allclose(ts.obs[:, 0, 4], (np.arange(1, 151) % 100) / 100, rtol=1e-6)
    with pytest.raises(envs.UnknownEnvError):
        envs.make("rware-tiny-4ag-clock")
