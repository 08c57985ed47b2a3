"""magpo_sable.py (and, where the two guiders share a test, magpo_mat.py): Eq. 8-11 on hand-computed
values, Sable's chunkwise retention against its recurrent form, the training loop's invariants (ratios,
decentralisation, seeds), learning on CoordSum, --ctce, and the command line."""

import difflib
import json
import math
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from helpers import cli_env, error_lines, fast_jit, random_policy_return, randomised
import ctds
import magpo_mat as mm
import magpo_sable as ms
import mappo
import runs

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Eq. 8-11
# --------------------------------------------------------------------------------------------------
def test_guider_objective_by_hand():
    # δ = 1.5, ε = 0.2. Per sample: (μ, π, μ_old, Â)
    #   0: (0.5, 0.5, 0.5, +1)  inside the bound: r = 1, r' = 1 -> 1
    #   1: (0.9, 0.3, 0.6, +1)  μ/π = 3 > δ: r = 1.5, r' = (0.3/0.6)·1.5 = 0.75 -> clip 0.8 -> min(1.5, 0.8) = 0.8
    #   2: (0.2, 0.5, 0.25, -2) μ/π = 0.4 < 1/δ: r = 0.8, r' = 2/1.5 = 1.333 -> clip 1.2 -> min(-1.6, -2.4) = -2.4
    #   3: (0.9, 0.3, 0.6, -1)  μ/π = 3 > δ but Â < 0 pulls it back: min(-1.5, -0.8) = -1.5
    mu, pi, old = (jnp.log(jnp.array(x)) for x in ([0.5, 0.9, 0.2, 0.9], [0.5, 0.3, 0.5, 0.3], [0.5, 0.6, 0.25, 0.6]))
    adv = jnp.array([1.0, 1.0, -2.0, -1.0])
    kl = jnp.array([0.1, 0.2, 0.3, 0.4])
    loss, kl_loss, info = ms.guider_objective(mu, pi, old, adv, kl, 1.5, 0.2)
    np.testing.assert_allclose(loss, -np.mean([1.0, 0.8, -2.4, -1.5]), rtol=1e-5)
    # the mask m: samples 1, 2, 3 lie outside (1/δ, δ)
    np.testing.assert_allclose(kl_loss, (0.2 + 0.3 + 0.4) / 4, rtol=1e-6)
    np.testing.assert_allclose(info["magpo/mask_frac"], 0.75)
    np.testing.assert_allclose(info["magpo/abs_log_ratio"], np.mean(np.abs(np.log([1.0, 3.0, 0.4, 3.0]))), rtol=1e-5)
    # No gradient to the guider where μ/π is out of bounds and Â pushes it further out (1, 2); a
    # gradient where it is inside (0) or where Â pulls it back in (3).
    grad = jax.grad(lambda lp: ms.guider_objective(lp, pi, old, adv, kl, 1.5, 0.2)[0])(mu)
    assert grad[1] == 0.0 and grad[2] == 0.0
    np.testing.assert_allclose(grad[0], -1.0 / 4, rtol=1e-5)  # -d(r Â)/d log μ = -r Â / 4
    np.testing.assert_allclose(grad[3], 1.5 / 4, rtol=1e-5)


def test_guider_mask_is_the_indicator_and_infinite_delta_is_plain_ppo():
    rng = np.random.default_rng(0)
    mu, pi, old, adv, kl = (jnp.array(rng.normal(size=256) * s, jnp.float32) for s in (1, 1, 1, 1, 1))
    kl = jnp.abs(kl)
    for delta in (1.2, 2.0):
        _, kl_loss, info = ms.guider_objective(mu, pi, old, adv, kl, delta, 0.2)
        outside = (np.exp(mu - pi) > delta) | (np.exp(mu - pi) < 1 / delta)
        np.testing.assert_allclose(kl_loss, np.mean(outside * np.asarray(kl)), rtol=1e-5)
        np.testing.assert_allclose(info["magpo/mask_frac"], outside.mean())
    loss, kl_loss, _ = ms.guider_objective(mu, pi, old, adv, kl, jnp.inf, 0.2)
    np.testing.assert_allclose(loss, ms.ppo_clip_objective(mu, old, adv, 0.2)[0], rtol=1e-5)
    assert kl_loss == 0.0


def test_actor_objective_by_hand():
    # KL mean 0.2; PPO term with ratio π/μ_old: e^0.5 -> clipped 1.2 (Â = 1), 1 (Â = -1) -> -(1.2 - 1)/2
    log_prob, old = jnp.array([0.5, 0.0]), jnp.zeros(2)
    loss, ppo, kl = ms.actor_objective(log_prob, old, jnp.array([1.0, -1.0]), jnp.array([0.1, 0.3]), 3.0, 0.2)
    np.testing.assert_allclose(ppo, -0.1, rtol=1e-5)
    np.testing.assert_allclose(kl, 0.2, rtol=1e-6)
    np.testing.assert_allclose(loss, 0.2 + 3.0 * -0.1, rtol=1e-5)
    # λ = 0: pure distillation towards the guider
    assert ms.actor_objective(log_prob, old, jnp.array([1.0, -1.0]), jnp.array([0.1, 0.3]), 0.0, 0.2)[0] == \
        pytest.approx(0.2)


# --------------------------------------------------------------------------------------------------
# Sable: chunkwise retention == recurrent retention
# --------------------------------------------------------------------------------------------------
def small_guider(continuous, num_agents=3, num_actions=4, n_head=2, n_block=2):
    args = ms.Args(embed_dim=16, n_head=n_head, n_block=n_block, decay_scaling_factor=0.9)
    return args, ms.Guider(num_agents, num_actions, continuous, 16, n_head, n_block, ms.decay_rates(args))


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_chunkwise_retention_equals_the_recurrent_form_with_resets(continuous):
    T, B, A, D, K = 12, 3, 3, 5, 4
    args, guider = small_guider(continuous)
    rng = np.random.default_rng(0)
    obs = jnp.array(rng.normal(size=(T, B, A, D)), jnp.float32)
    reset = np.zeros((T, B), bool)
    reset[0, 0] = reset[4, 1] = reset[5, 1] = reset[9, 0] = reset[11, 2] = True  # at the start, inside, twice in a row
    step_count = np.zeros((T, B), np.int32)
    for t in range(T):
        step_count[t] = np.where(reset[t], 0, step_count[t - 1] + 1 if t else 7)
    mask = rng.random((T, B, A, K)) < 0.7
    mask[..., 0] = True
    reset, step_count, mask = jnp.array(reset), jnp.array(step_count), jnp.array(mask)
    action0 = jnp.zeros((T, B, A, K)) if continuous else jnp.zeros((T, B, A), jnp.int32)
    hidden0 = ms.zero_guider_hidden(args, B)
    params = guider.init(jax.random.PRNGKey(0), hidden0, obs, action0, reset, step_count, mask)
    params = randomised(params, jax.random.PRNGKey(1))
    # a nonzero state carried in from an earlier rollout
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    hidden0 = ms.SableHidden(*(0.1 * jax.random.normal(k, hidden0.encoder.shape) for k in keys))

    # recurrent: one step at a time, agents one after another (what the rollout does)
    act = fast_jit(lambda h, o, r, s, m, k: guider.apply(params, h, o, r, s, m, k, method=ms.Guider.act))
    hidden, actions, log_probs, values, states = hidden0, [], [], [], []
    for t in range(T):
        states.append(hidden)
        action, log_prob, value, hidden = act(hidden, obs[t], reset[t], step_count[t], mask[t], jax.random.PRNGKey(10 + t))
        actions.append(action), log_probs.append(log_prob), values.append(value)
    actions, log_probs, values = jnp.stack(actions), jnp.stack(log_probs), jnp.stack(values)
    if not continuous:
        assert np.take_along_axis(np.asarray(mask), np.asarray(actions)[..., None], -1).all()  # masks honoured

    # chunkwise: the whole sequence at once, teacher-forced on the sampled actions
    @fast_jit
    def replay(hidden, obs, actions, reset, step_count, mask):
        value, pi = guider.apply(params, hidden, obs, actions, reset, step_count, mask)
        return value, pi.log_prob(actions)

    value, log_prob = replay(hidden0, obs, actions, reset, step_count, mask)
    np.testing.assert_allclose(value, values, atol=2e-4)
    np.testing.assert_allclose(log_prob, log_probs, atol=2e-4)
    # and in chunks of 4 steps, each from the state stored at its start (what the update replays)
    for start in (0, 4, 8):
        sl = slice(start, start + 4)
        value, log_prob = replay(states[start], obs[sl], actions[sl], reset[sl], step_count[sl], mask[sl])
        np.testing.assert_allclose(log_prob, log_probs[sl], atol=2e-4)
        np.testing.assert_allclose(value, values[sl], atol=2e-4)


@pytest.mark.parametrize("module", [ms, mm], ids=["sable", "mat"])
def test_continuous_decoder_token_is_the_squashed_action(module):
    """As Mava's decoders (mava/networks/utils/sable/decode.py, utils/mat/decode.py): the next agent's
    decoder reads the previous agent's action as the env got it (the squashed sample: K numbers, no
    start flag), the first agent zeros, through an action encoder with a bias; the guider's std starts
    at softplus(0) + 1e-3 (Sable) or softplus(0) (MAT)."""
    B, A, D, K = 4, 3, 5, 2
    if module is ms:
        args, guider = small_guider(True, num_agents=A, num_actions=K)
        hidden = ms.zero_guider_hidden(args, B)
    else:
        guider, hidden = mm.Guider(A, K, True, width=16, n_head=2, n_block=2), ()
    obs = jax.random.normal(jax.random.PRNGKey(0), (1, B, A, D))
    no_reset, no_steps, mask = jnp.zeros((1, B), bool), jnp.zeros((1, B), jnp.int32), jnp.ones((1, B, A, K), bool)
    params = guider.init(jax.random.PRNGKey(1), hidden, obs, jnp.zeros((1, B, A, K)), no_reset, no_steps, mask)
    encoder = params["params"]["action_encoder"]["layers_0"]
    assert encoder["kernel"].shape == (K, 16) and encoder["bias"].shape == (16,)
    action, log_prob, _, _ = guider.apply(params, hidden, obs[0], no_reset[0], no_steps[0], mask[0],
                                          jax.random.PRNGKey(2), method=module.Guider.act)
    assert action.shape == (B, A, K) and (np.abs(action) <= 1.0).all()  # squashed, as the env gets them
    np.testing.assert_array_equal(guider.apply(params, action, method=module.Guider.action_token), action)
    np.testing.assert_array_equal(guider.apply(params, (B, 1), method=module.Guider.start_token), np.zeros((B, 1, K)))
    # the training pass reads the same tokens: it gives each agent the log-prob its sampling step gave it
    _, pi = guider.apply(params, hidden, obs, action[None], no_reset, no_steps, mask)
    np.testing.assert_allclose(pi.log_prob(action[None])[0], log_prob, atol=1e-5)
    np.testing.assert_allclose(pi.scale, math.log(2.0) + (1e-3 if module is ms else 0.0), rtol=1e-6)


@pytest.mark.parametrize("masked", [False, True], ids=["encoder", "decoder"])
def test_chunkwise_retention_carries_the_same_state_as_the_recurrent_form(masked):
    """The state after a chunk (chunkwise, several blocks) equals the state after stepping through it."""
    B, C, A, M, nh = 2, 24, 3, 8, 2
    decay = (0.9, 0.6)
    retention = ms.Retention(M, nh, decay, A, masked)
    rng = np.random.default_rng(3)
    x = jnp.array(rng.normal(size=(B, C * A, M)), jnp.float32)
    reset = np.zeros((B, C), bool)
    reset[0, 5] = reset[1, 0] = reset[1, 17] = True
    reset = jnp.array(reset)
    step_count = jnp.array(rng.integers(0, 50, size=(B, C)), jnp.int32)
    hidden0 = jnp.array(rng.normal(size=(B, nh, M // nh, M // nh)), jnp.float32)
    params = retention.init(jax.random.PRNGKey(0), x, x, hidden0, reset, step_count, True)
    assert ms.block_steps(C, A) < C  # several blocks: the scan across blocks is exercised
    out, state = retention.apply(params, x, x, hidden0, reset, step_count, True)
    kappa = jnp.array(decay)[None, :, None, None]
    hidden, outs = hidden0, []
    for t in range(C):
        hidden = jnp.where(reset[:, t, None, None, None], 0.0, hidden) * kappa
        tokens = x[:, t * A:(t + 1) * A]
        if masked:  # the decoder: one agent at a time
            for a in range(A):
                token = tokens[:, a:a + 1]
                y, hidden = retention.apply(params, token, token, hidden, None, step_count[:, t:t + 1], False)
                outs.append(y)
        else:
            y, hidden = retention.apply(params, tokens, tokens, hidden, None, step_count[:, t:t + 1], False)
            outs.append(y)
    np.testing.assert_allclose(out, jnp.concatenate(outs, 1), atol=1e-4)
    np.testing.assert_allclose(state, hidden, atol=1e-4)


def test_retention_output_is_mavas_formula_gate_on_encoded_keys_and_group_norm():
    """One recurrent step of cross-retention from a zero state, re-derived as Mava's
    MultiScaleRetention computes it: the position added to key, query and value; per head
    q (k^T v); flax's GroupNorm(num_groups=n_head) over each head's features (so groups of
    hs / n_head features, one scale and bias shared by the heads); the gate swish(key + pe)."""
    import flax.linen as nn

    B, L, M, nh, A = 2, 3, 16, 2, 3
    hs = M // nh
    retention = ms.Retention(M, nh, (0.9, 0.6), A, masked=True)
    rng = np.random.default_rng(4)
    x, query = (jnp.array(rng.normal(size=(B, L, M)), jnp.float32) for _ in range(2))
    step_count = jnp.array([[3], [11]], jnp.int32)
    hidden0 = jnp.zeros((B, nh, hs, hs))
    params = randomised(retention.init(jax.random.PRNGKey(0), x, query, hidden0, None, step_count, False),
                        jax.random.PRNGKey(1))
    out, _ = retention.apply(params, x, query, hidden0, None, step_count, False)

    p = params["params"]
    pe = ms.positional_encoding(jnp.repeat(step_count, L, axis=1), M)
    key, q_in = x + pe, query + pe
    heads = []
    for h in range(nh):
        cols = slice(h * hs, (h + 1) * hs)
        q, k, v = q_in @ p["w_q"][:, cols], key @ p["w_k"][:, cols], key @ p["w_v"][:, cols]
        heads.append(q @ (jnp.swapaxes(k, 1, 2) @ v))
    ret = jnp.concatenate(heads, -1)
    norm = nn.GroupNorm(num_groups=nh)
    norm_params = {"params": {"scale": p["norm_scale"], "bias": p["norm_bias"]}}
    ret = norm.apply(norm_params, ret.reshape(-1, hs)).reshape(ret.shape)
    expected = (jax.nn.swish(key @ p["w_g"]) * ret) @ p["w_o"]
    np.testing.assert_allclose(out, expected, rtol=2e-4, atol=2e-5)
    # the gate reads the encoded keys: the same keys at another step give another output
    other, _ = retention.apply(params, x, query, hidden0, None, step_count + 5, False)
    assert not np.allclose(other, out, atol=1e-3)


@pytest.mark.parametrize("algo", [ms, mm], ids=["sable", "mat"])
def test_guider_sees_all_agents_and_the_learner_only_its_own(algo):
    """The guider is centralised: agent 2's policy moves with agent 0's observation. The learner is
    decentralised: changing another agent's observation leaves agent i's action distribution as is."""
    args = algo.Args(env_id="coordsum-3x10", embed_dim=16, n_block=1)
    env = envs.make(args.env_id)
    actor, guider = algo.make_networks(args, env)
    E, A, D, K = 4, env.num_agents, env.obs_dim, env.num_actions
    rng = np.random.default_rng(0)
    obs = jnp.array(rng.normal(size=(1, E, A, D)), jnp.float32)
    other = obs.at[:, :, 0].add(jnp.array(rng.normal(size=D), jnp.float32))  # only agent 0's observation changes
    reset, mask = jnp.ones((1, E), bool), jnp.ones((1, E, A, K), bool)
    actor_params = actor.init(jax.random.PRNGKey(0), jnp.zeros((E * A, 128)), obs.reshape(1, E * A, D),
                              jnp.ones((1, E * A), bool), mask.reshape(1, E * A, K))
    actor_params = randomised(actor_params, jax.random.PRNGKey(1))

    @fast_jit
    def actor_logits(o):
        _, pi = actor.apply(actor_params, jnp.zeros((E * A, 128)), algo.agents_to_batch(o), jnp.ones((1, E * A), bool),
                            algo.agents_to_batch(mask))
        return algo.batch_to_agents(pi.logits, A)

    before, after = actor_logits(obs), actor_logits(other)
    np.testing.assert_array_equal(before[:, :, 1:], after[:, :, 1:])
    assert not np.allclose(before[:, :, 0], after[:, :, 0])
    action = jnp.zeros((1, E, A), jnp.int32)
    hidden = algo.zero_guider_hidden(args, E)
    guider_params = randomised(guider.init(jax.random.PRNGKey(0), hidden, obs, action, reset, jnp.zeros((1, E), jnp.int32),
                                           mask), jax.random.PRNGKey(2))
    guider_logits = fast_jit(lambda o: guider.apply(guider_params, hidden, o, action, reset, jnp.zeros((1, E), jnp.int32),
                                                   mask)[1].logits)
    assert not np.allclose(guider_logits(obs)[:, :, 2], guider_logits(other)[:, :, 2])


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
# The rollout's agent order and each sequence's own memory (the defaults, not the released code's update
# epochs; spelled out), so that every update's first minibatch replays the rollout exactly: the alignment checks.
TINY = dict(env_id="coordsum-3x10", num_envs=8, rollout_length=32, num_minibatches=2, ppo_epochs=2,
            num_evals=2, num_eval_episodes=4, total_timesteps=2 * 2 * 8 * 32, recurrent_chunk_size=8,
            embed_dim=16, hidden_dim=32, shuffle_agents=False, stale_epoch_memory=False)


@lru_cache(maxsize=None)
def compiled_train(num_seeds, **overrides):
    args = ms.Args(**{**TINY, **overrides}, num_seeds=num_seeds)
    train = jax.vmap(ms.make_train(args, envs.make(args.env_id)))
    # the tiny runs take far less time than their compilation; the learning run the other way round
    return fast_jit(train) if args.total_timesteps <= TINY["total_timesteps"] else jax.jit(train)


def run_train(num_seeds, seed=0, **overrides):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(num_seeds))
    return jax.device_get(compiled_train(num_seeds, **overrides)(keys, jnp.arange(num_seeds)))


def test_ctce_trains_sable_alone_deploys_it_and_runs_are_deterministic():
    out = run_train(1, ctce=True)
    h = out["history"]
    assert h["episodes"].sum() > 0
    # chunks of 8 steps replayed from stored retention states, an episode end inside the 4 x 32 steps
    assert (h["loss/first_ratio_dev"] < 1e-5).all(), h["loss/first_ratio_dev"]
    assert not {"loss/kl", "loss/guider_kl", "magpo/mask_frac", "guider/episode_return"} & set(h)  # plain PPO
    # the deployed (saved, evaluated) policy is the guider
    assert any("encoder" in "/".join(map(str, path)) for path, _ in jax.tree_util.tree_leaves_with_path(out["actor"]))
    # the same seed gives the same run; another seed another (seed batching itself is the skeleton's,
    # tested on ippo/mappo, and the command-line test trains 2 seeds in one call)
    np.testing.assert_array_equal(run_train(1, ctce=True)["history"]["eval/episode_return"], h["eval/episode_return"])
    assert run_train(1, seed=1, ctce=True)["history"]["loss/guider"][0, 0] != h["loss/guider"][0, 0]


def test_continuous_mpe_replays_the_squashed_actions_exactly():
    """On MPE (continuous actions): the rollout stores the squashed actions and their clipped log-probs,
    and the update's replays give the same numbers (ratios 1 up to float rounding on each update's first
    minibatch, the guider's and the learner's); with a small δ the mask is on, and every loss is finite."""
    h = run_train(1, env_id="mpe-simple_spread_3ag", delta=1.05)["history"]
    assert (h["loss/first_ratio_dev"] < 1e-5).all(), h["loss/first_ratio_dev"]  # guider: μ/μ_old
    assert (h["loss/first_actor_ratio_dev"] < 1e-5).all(), h["loss/first_actor_ratio_dev"]  # learner
    assert (h["magpo/mask_frac"] > 0).any()
    for k in ("loss/guider", "loss/guider_kl", "loss/entropy", "loss/actor", "loss/kl", "loss/value"):
        assert np.isfinite(h[k]).all(), k


def test_shuffle_agents_moves_the_guiders_ratio_and_leaves_the_learners_replay():
    """--shuffle-agents (rec_magpo.py:450-451: one order of the agents per epoch for the whole batch): the
    guider's ratio leaves 1 from the first minibatch on (its decoder is teacher-forced in another order than
    the rollout's), while the learner, one network shared by the agents, each on its own observations and
    GRU state, replays its rollout log-probs exactly and keeps its PPO term; the value loss too (Sable's
    encoder does not depend on the agents' order). With lr = 0 nothing moves, so every minibatch of both
    runs sees the same networks on the same sequences, only the agents' order differs."""
    off, on = run_train(1, lr=0.0)["history"], run_train(1, lr=0.0, shuffle_agents=True)["history"]
    assert (off["loss/first_ratio_dev"] < 1e-5).all(), off["loss/first_ratio_dev"]
    assert (on["loss/first_ratio_dev"] > 1e-4).all(), on["loss/first_ratio_dev"]
    assert (on["loss/first_actor_ratio_dev"] < 1e-5).all(), on["loss/first_actor_ratio_dev"]
    np.testing.assert_allclose(on["loss/actor"], off["loss/actor"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(on["loss/value"], off["loss/value"], rtol=1e-5)
    # the learner's KL to the guider does change: the guider's conditionals are those of another order
    assert not np.allclose(on["loss/kl"], off["loss/kl"], rtol=1e-4, atol=0)


def test_next_memory_index_is_the_released_codes_permute_and_store_back():
    """--stale-epoch-memory: the index map against a direct simulation of rec_magpo.py:443-471 for 3 epochs.
    Each epoch the released code gathers the trajectories and their start memories with one permutation,
    pairs them by position in its minibatches, then stores the gathered memories back beside the trajectories
    as they were."""
    rng = np.random.default_rng(0)
    N = 8
    trajectories, stored = np.arange(N), np.arange(N)  # stored[j]: whose memory row j holds (each its own at first)
    index = jnp.arange(N)
    composed = np.arange(N)  # p_1[p_2[... p_(e-1)]]: epoch 1 each its own memory, epoch 2 p1[i]'s, epoch 3 p1[p2[i]]'s
    for _ in range(3):
        perm = rng.permutation(N)
        batch, stored = trajectories[perm], stored[perm]  # :445 and :447
        replayed_from = np.empty(N, int)
        replayed_from[batch] = stored  # position k of the minibatches pairs trajectory batch[k] with memory stored[k]
        np.testing.assert_array_equal(replayed_from, composed)
        np.testing.assert_array_equal(index, replayed_from)
        index = ms.next_memory_index(index, jnp.asarray(perm))  # :471: `stored` kept, `trajectories` not
        composed = composed[perm]


def test_stale_epoch_memory_changes_nothing_in_one_epoch_and_the_second_epoch_on():
    """One epoch replays from the right memories either way: the same run to the bit. Two epochs: the first
    epoch's ratios are still 1, the run is another."""
    off, on = run_train(1, ctce=True, ppo_epochs=1), run_train(1, ctce=True, ppo_epochs=1, stale_epoch_memory=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, on, off)
    # the run without the flag is test_ctce_trains_sable_alone_deploys_it_and_runs_are_deterministic's
    off, on = run_train(1, ctce=True)["history"], run_train(1, ctce=True, stale_epoch_memory=True)["history"]
    assert (on["loss/first_ratio_dev"] < 1e-5).all(), on["loss/first_ratio_dev"]
    assert not np.array_equal(on["loss/guider"], off["loss/guider"])


def test_group_minibatches_draw_one_order_for_every_group():
    """--update-batch-size 2 on 2 chunks x 4 envs (sequence n = k * 4 + e): the groups are envs {0, 1} and
    {2, 3}; one permutation of a group's 4 sequences k * 2 + e' picks the same (k, e') in both groups,
    group 0's half of a minibatch first. With one group: a permutation of all 8 sequences."""
    key = jax.random.PRNGKey(3)
    order = np.asarray(ms.group_minibatches(key, 8, 4, 2, 2))
    local = np.asarray(jax.random.permutation(key, 4)).reshape(2, 2)  # k * 2 + e'
    k, e = local // 2, local % 2
    np.testing.assert_array_equal(order, np.concatenate([k * 4 + e, k * 4 + 2 + e], axis=1))
    assert sorted(order.ravel()) == list(range(8))
    np.testing.assert_array_equal(ms.group_minibatches(key, 8, 4, 1, 2),
                                  jax.random.permutation(key, 8).reshape(2, 4))


def test_normalize_groups_normalises_each_groups_part_of_the_minibatch():
    x = jnp.array([1.0, 3.0, 10.0, 20.0]).reshape(1, 4, 1)  # (C, n, A): group 0 = [1, 3], group 1 = [10, 20]
    np.testing.assert_allclose(ms.normalize_groups(x, 2).ravel(), [-1, 1, -1, 1], atol=1e-6)
    np.testing.assert_array_equal(ms.normalize_groups(x, 1), ms.normalize(x))


def test_act_in_groups_gives_the_groups_one_sampling_noise():
    """Envs 0, 1 and 2, 3 see the same observations: in two groups they act alike (one key), in one group not."""
    args = ms.Args(**TINY, num_seeds=1)
    env = envs.make(args.env_id)
    guider = ms.make_networks(args, env)[1]
    _, ts = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 2))
    ts = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x]), ts)  # envs 2, 3 = envs 0, 1
    hidden, step = ms.zero_guider_hidden(args, 4), jnp.zeros(4, jnp.int32)
    params = guider.init(jax.random.PRNGKey(1), hidden, ts.obs[None], jnp.zeros((1, 4, 3), jnp.int32), ts.reset[None],
                         step[None], ts.action_mask[None])
    acted = [ms.act_in_groups(guider, params, hidden, ts.obs, ts.reset, step, ts.action_mask,
                              jax.random.PRNGKey(2), groups) for groups in (1, 2)]
    one, two = (np.asarray(a[0]).reshape(2, 2, 3) for a in acted)  # (group, env, agent)
    np.testing.assert_array_equal(two[0], two[1])
    assert (one[0] != one[1]).any()
    np.testing.assert_allclose(acted[0][2], acted[1][2], rtol=1e-6)  # the values do not depend on the noise


def test_update_batch_size_replays_its_rollout():
    """Two groups of 4 envs: each update's first minibatch replays the rollout exactly (the grouped acting
    and the grouped minibatches line up), and the run is not the ungrouped one. lr = 0 (the networks stay
    as they are, so every minibatch's replay must match; the ungrouped run is the shuffle test's `off`)."""
    grouped, plain = run_train(1, lr=0.0, update_batch_size=2)["history"], run_train(1, lr=0.0)["history"]
    assert (grouped["loss/first_ratio_dev"] < 1e-5).all(), grouped["loss/first_ratio_dev"]
    assert (grouped["loss/first_actor_ratio_dev"] < 1e-5).all()
    assert grouped["loss/guider"][0, 0] != plain["loss/guider"][0, 0]


def test_the_released_codes_epoch_flags_read_the_same_in_every_script():
    """--shuffle-agents in all three scripts, --stale-epoch-memory in the two with Sable's memory, spelled
    and documented identically; magpo_mat.py has no memory to replay (no such flag, Args says False)."""
    import inspect

    def field(module, name):
        lines = inspect.getsource(module.Args).splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith(f"    {name}: bool = False"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].rstrip().endswith('"""'))
        return lines[start:end + 1]

    for name in ("shuffle_agents", "stale_epoch_memory"):
        assert field(ctds, name) == field(ms, name), name
        assert "NOTE(paper vs official code)" in "\n".join(field(ms, name))
    assert field(mm, "shuffle_agents") == field(ms, "shuffle_agents")
    for module in (ms, ctds):
        args = module.parse_args(["--shuffle-agents", "--stale-epoch-memory"])
        assert args.shuffle_agents and args.stale_epoch_memory
        assert not module.Args().shuffle_agents and not module.Args().stale_epoch_memory  # the paper text's epochs
        args = module.parse_args(["--no-shuffle-agents", "--no-stale-epoch-memory"])
        assert not args.shuffle_agents and not args.stale_epoch_memory
    assert not mm.Args().shuffle_agents and not mm.Args().stale_epoch_memory
    assert mm.parse_args(["--shuffle-agents"]).shuffle_agents
    with pytest.raises(runs.ArgError, match="Unrecognized"):
        mm.parse_args(["--stale-epoch-memory"])


@pytest.mark.parametrize("module", [ms, mm], ids=["sable", "mat"])
def test_microbatches_give_the_minibatch_gradient(module):
    """A minibatch's gradient summed over 4 microbatches (the advantages normalised over the whole
    minibatch) trains the same run as one pass over it, up to float rounding: the same losses on every
    update and the same learner after 4 updates x 2 epochs x 2 minibatches of 16 sequences. (ctds.py's
    minibatch step is magpo_sable.py's text: test_ctds.py.)"""
    runs = []
    tiny = {k: v for k, v in TINY.items() if not (module is mm and k == "stale_epoch_memory")}  # MAT: no memory
    for microbatch_size in (None, 4):
        args = module.Args(**tiny, num_seeds=1, microbatch_size=microbatch_size)
        assert args.microbatch_sequences == (16 if microbatch_size is None else 4)
        train = fast_jit(jax.vmap(module.make_train(args, envs.make(args.env_id))))
        runs.append(jax.device_get(train(jnp.array([jax.random.PRNGKey(0)]), jnp.arange(1))))
    whole, micro = runs
    for k in ("loss/guider", "loss/value", "loss/entropy", "loss/actor", "loss/kl", "loss/first_ratio_dev"):
        np.testing.assert_allclose(micro["history"][k], whole["history"][k], rtol=1e-3, atol=1e-6, err_msg=k)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                           micro["actor"], whole["actor"])


def test_learner_learns_coordsum_with_aligned_replays():
    """One short run: ratios are exactly 1 on every update's first minibatch (the guider's μ/μ_old, and
    the learner's replayed log-probs against the rollout's: chunks of 16 steps replayed from stored GRU
    and retention states, with episode ends inside chunks), the MAGPO diagnostics are logged, and the
    decentralised learner beats a random policy by far."""
    random_return = random_policy_return("coordsum-3x10")
    assert 2.0 < random_return < 8.0
    out = run_train(1, recurrent_chunk_size=16, num_envs=16, rollout_length=64, num_minibatches=2, ppo_epochs=4,
                    num_evals=2, num_eval_episodes=32, total_timesteps=2 * 30 * 1024, lr=1e-3, embed_dim=32,
                    hidden_dim=128, delta=1.3, lam=2.0)
    h = out["history"]
    assert (h["loss/first_ratio_dev"] < 1e-5).all(), h["loss/first_ratio_dev"]  # guider: μ/μ_old
    assert (h["loss/first_actor_ratio_dev"] < 1e-5).all(), h["loss/first_actor_ratio_dev"]  # learner: replay vs rollout
    for k in ("loss/kl", "loss/guider_kl", "magpo/mask_frac", "magpo/abs_log_ratio", "guider/episode_return"):
        assert np.isfinite(h[k]).all()
    curve = h["eval/episode_return"].mean(-1)[0]  # the decentralised learner
    assert curve[-1] > 3 * random_return, (curve, random_return)
    assert out["absolute/episode_return"].shape == (1, 10 * 32)


# --------------------------------------------------------------------------------------------------
# The command line, the preset, the diff ladder
# --------------------------------------------------------------------------------------------------
def run_cli(*flags, cwd):
    return subprocess.run([sys.executable, str(ROOT / "magpo_sable.py"), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=cli_env())


CLI_TINY = ["--env-id", "coordsum-3x10", "--num-seeds", "2", "--num-envs", "4", "--rollout-length", "16",
            "--num-minibatches", "1", "--ppo-epochs", "1", "--num-evals", "2", "--num-eval-episodes", "2",
            "--total-timesteps", str(2 * 4 * 16), "--embed-dim", "16", "--hidden-dim", "32"]


def test_cli_trains_streams_results_saves_and_reloads(tmp_path):
    proc = run_cli(*CLI_TINY, "--delta", "1.2", "--lam", "2", "--out-dir", "out", "--run-name", "r", "--save-model",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [l for l in proc.stdout.splitlines() if l.startswith("[")]
    assert len(progress) == 2 and "eval return" in progress[0] and "guider" in progress[0] and "eta" in progress[0]
    run = tmp_path / "out" / "r"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["checkpoint"], r["seed_index"]) for r in rows) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {"magpo/mask_frac", "magpo/abs_log_ratio", "loss/kl", "guider/episode_return"} <= set(rows[0])
    marl = json.loads((run / "marl_eval.json").read_text())
    assert len(marl["coordsum"]["coordsum-3x10"]["magpo"]["seed_1"]["absolute_metrics"]["episode_return"]) == 20
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "magpo_sable" and config["args"]["delta"] == 1.2 and config["args"]["lam"] == 2.0
    evaluated = run_cli("--eval-from", str(run), "--num-eval-episodes", "4", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.count("coordsum-3x10 return") == 2
    wrong = subprocess.run([sys.executable, str(ROOT / "mappo.py"), "--eval-from", str(run)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, env=cli_env())
    assert wrong.returncode == 2 and "trained by magpo_sable.py" in wrong.stderr


@pytest.mark.parametrize("flags, message", [
    (["--delta", "1"], "--delta must be greater than 1"),
    (["--lam", "-1"], "--lam must be non-negative"),
    (["--embed-dim", "30", "--n-head", "4"], "must be an even multiple of --n-head"),
    (["--decay-scaling-factor", "1.5"], "--decay-scaling-factor must lie in [0, 1]"),
    (["--env-id", "rware-tiny-4ag", "--ctce", "--preset", "paper"], "no sable configuration for rware-tiny-4ag"),
    (["--env-id", "coordsum-3x11"], "valid ids, closest first: coordsum-3x10"),
])
def test_cli_bad_input_is_one_line_and_exit_2(flags, message, tmp_path):
    proc = run_cli(*flags, cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


def test_preset_paper_gives_the_magpo_or_sable_row_and_flags_override():
    args = ms.parse_args(["--env-id", "coordsum-3x10", "--preset", "paper", "--ppo-epochs", "3"])
    assert (args.num_minibatches, args.clip_eps, args.embed_dim, args.n_head, args.n_block) == (8, 0.05, 32, 1, 2)
    assert (args.lr, args.lam, args.delta, args.decay_scaling_factor, args.ppo_epochs) == (0.00025, 2.0, 1.3, 1.0, 3)
    args = ms.parse_args(["--env-id", "rware-tiny-4ag", "--preset", "paper"])
    assert (args.lam, args.delta, args.n_block, args.lr) == (8.0, 1.3, 3, 0.0005)
    sable = ms.parse_args(["--env-id", "coordsum-3x10", "--preset", "paper", "--ctce"])
    assert (sable.embed_dim, sable.ppo_epochs, sable.max_grad_norm, sable.lr) == (64, 15, 5.0, 0.0005)


SHARED = ["TanhNormal", "policy_entropy", "ScannedGRU", "ActionHead", "Actor", "agents_to_batch", "batch_to_agents",
          "env_action", "compute_gae", "ppo_clip_objective", "clipped_value_loss", "normalize", "keep_best",
          "make_optimizer", "parse_args"]  # the run plumbing is runs.py's: one text by construction


def test_shared_sections_are_identical_to_mappo():
    """The diff ladder: the actor, the pure PPO math and the plumbing are the same text in both."""
    import inspect

    for name in SHARED:
        assert inspect.getsource(getattr(ms, name)) == inspect.getsource(getattr(mappo, name)), name
    assert ms.TanhNormal is mappo.TanhNormal is ctds.TanhNormal is mm.TanhNormal is runs.TanhNormal  # one distribution
    assert runs.LOG_PROB_CLIP == 0.999
    shared_flags = [l for l in inspect.getsource(mappo.Args).splitlines()]
    magpo_flags = inspect.getsource(ms.Args).splitlines()
    missing = [l for l in difflib.unified_diff(shared_flags, magpo_flags, n=0, lineterm="") if l.startswith("-")
               and not l.startswith("---")]
    assert missing == [], missing  # every mappo flag is spelled identically; magpo only adds its own block
