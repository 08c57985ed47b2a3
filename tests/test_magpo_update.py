"""magpo_sable.py's update epochs (and magpo_mat.py's and ctds.py's, which share them): the released code's
agent order and stale memory, the update-batch groups and microbatching, each against the plain update on a
tiny run. Split from test_magpo.py so that the two files train on the two CI workers side by side."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctds
import envs
import magpo_mat as mm
import magpo_sable as ms
from helpers import fast_jit
from test_magpo import TINY, run_train  # one compiled run per configuration within a worker


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
    and the grouped minibatches line up), and the run is not the ungrouped one."""
    grouped, plain = run_train(1, update_batch_size=2)["history"], run_train(1)["history"]
    assert (grouped["loss/first_ratio_dev"] < 1e-5).all(), grouped["loss/first_ratio_dev"]
    assert (grouped["loss/first_actor_ratio_dev"] < 1e-5).all()
    assert grouped["loss/guider"][0, 0] != plain["loss/guider"][0, 0]


def test_the_released_codes_epoch_flags_read_the_same_in_every_script():
    """--shuffle-agents in all three scripts, --stale-epoch-memory in the two with Sable's memory, spelled
    and documented identically; magpo_mat.py has no memory to replay (no such flag, Args says False)."""
    import inspect

    def field(module, name):
        lines = inspect.getsource(module.Args).splitlines()
        start = next(i for i, l in enumerate(lines) if l.startswith(f"    {name}: bool = True"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].rstrip().endswith('"""'))
        return lines[start:end + 1]

    for name in ("shuffle_agents", "stale_epoch_memory"):
        assert field(ctds, name) == field(ms, name), name
        assert "NOTE(paper vs official code)" in "\n".join(field(ms, name))
    assert field(mm, "shuffle_agents") == field(ms, "shuffle_agents")
    for module in (ms, ctds):
        args = module.parse_args(["--shuffle-agents", "--stale-epoch-memory"])
        assert args.shuffle_agents and args.stale_epoch_memory
        assert module.Args().shuffle_agents and module.Args().stale_epoch_memory  # the released code's epochs
        args = module.parse_args(["--no-shuffle-agents", "--no-stale-epoch-memory"])
        assert not args.shuffle_agents and not args.stale_epoch_memory
    assert mm.Args().shuffle_agents and not mm.Args().stale_epoch_memory
    assert not mm.parse_args(["--no-shuffle-agents"]).shuffle_agents
    with pytest.raises(mm.ArgError, match="Unrecognized"):
        mm.parse_args(["--stale-epoch-memory"])


@pytest.mark.parametrize("module", [ms, ctds], ids=["sable", "ctds"])
def test_microbatches_give_the_minibatch_gradient(module):
    """A minibatch's gradient summed over 4 microbatches (the advantages normalised over the whole
    minibatch) trains the same run as one pass over it, up to float rounding: the same losses on every
    update and the same learner after 4 updates x 2 epochs x 2 minibatches of 16 sequences. (magpo_mat.py's
    make_train is magpo_sable.py's text: test_magpo_mat_is_magpo_sable_with_another_guider.)"""
    runs = []
    for microbatch_size in (None, 4):
        args = module.Args(**TINY, num_seeds=1, microbatch_size=microbatch_size)
        assert args.microbatch_sequences == (16 if microbatch_size is None else 4)
        train = fast_jit(jax.vmap(module.make_train(args, envs.make(args.env_id))))
        runs.append(jax.device_get(train(jnp.array([jax.random.PRNGKey(0)]), jnp.arange(1))))
    whole, micro = runs
    for k in ("loss/guider", "loss/value", "loss/entropy", "loss/actor", "loss/kl", "loss/first_ratio_dev"):
        np.testing.assert_allclose(micro["history"][k], whole["history"][k], rtol=1e-3, atol=1e-6, err_msg=k)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
                           micro["actor"], whole["actor"])
