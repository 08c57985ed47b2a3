"""ctds.py: the CTDS objectives (by hand, and as MAGPO's with δ -> ∞, no mask and λ = 0), the
training loop's invariants and learning on CoordSum in one short run, the command line, and the
diff ladder against magpo_sable.py."""

import inspect
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctds
import envs
import magpo_sable as ms
from helpers import error_lines, fast_jit, random_policy_return

ROOT = Path(__file__).resolve().parents[1]


def test_ctds_objectives_are_magpos_without_the_constraint():
    rng = np.random.default_rng(0)
    mu, pi, old, adv = (jnp.array(rng.normal(size=64), jnp.float32) for _ in range(4))
    kl = jnp.abs(jnp.array(rng.normal(size=64), jnp.float32))
    # teacher: plain PPO = MAGPO's guider objective with δ -> ∞ (the mask is then empty)
    teacher, info = ctds.teacher_objective(mu, old, adv, 0.2)
    guider, masked_kl, _ = ms.guider_objective(mu, pi, old, adv, kl, jnp.inf, 0.2)
    np.testing.assert_allclose(teacher, guider, rtol=1e-6)
    assert masked_kl == 0.0
    np.testing.assert_allclose(info["loss/clip_frac"], np.mean(np.abs(np.exp(mu - old) - 1) > 0.2))
    # students: distillation = MAGPO's learner objective with λ = 0
    student = ctds.student_objective(pi, old, adv, kl, 0.0, 0.2)
    np.testing.assert_allclose(student[0], ms.actor_objective(pi, old, adv, kl, 0.0, 0.2)[0], rtol=1e-6)
    np.testing.assert_allclose(student[0], np.mean(kl), rtol=1e-6)


def test_student_objective_by_hand_with_the_auxiliary_ppo_term():
    # KL mean 0.2; PPO with ratio π/μ_old: e^0.5 -> clipped 1.2 (Â = 1), 1 (Â = -1): -(1.2 - 1)/2 = -0.1
    loss, ppo, kl = ctds.student_objective(jnp.array([0.5, 0.0]), jnp.zeros(2), jnp.array([1.0, -1.0]),
                                           jnp.array([0.1, 0.3]), 0.5, 0.2)
    np.testing.assert_allclose((loss, ppo, kl), (0.2 - 0.05, -0.1, 0.2), rtol=1e-5)
    assert ctds.Args().lam == 0.0  # pure distillation by default


def test_students_learn_coordsum_with_aligned_replays():
    """One short run: ratios are exactly 1 on every update's first minibatch (teacher μ/μ_old, and the
    students' replayed log-probs against the rollout's), and the students beat a random policy."""
    random_return = random_policy_return("coordsum-3x10")
    args = ctds.Args(env_id="coordsum-3x10", num_seeds=1, num_envs=16, rollout_length=64, num_minibatches=2,
                     ppo_epochs=4, num_evals=2, num_eval_episodes=32, total_timesteps=2 * 30 * 1024, lr=1e-3,
                     embed_dim=32, shuffle_agents=False, stale_epoch_memory=False)  # replays that align exactly
    train = jax.jit(jax.vmap(ctds.make_train(args, envs.make(args.env_id))))
    out = jax.device_get(train(jnp.array([jax.random.PRNGKey(0)]), jnp.arange(1)))
    h = out["history"]
    assert (h["loss/first_ratio_dev"] < 1e-5).all() and (h["loss/first_actor_ratio_dev"] < 1e-5).all()
    assert "magpo/mask_frac" not in h and np.isfinite(h["guider/episode_return"]).all()
    curve = h["eval/episode_return"].mean(-1)[0]  # the decentralised students
    assert curve[-1] > 3 * random_return, (curve, random_return)


def test_released_codes_epochs_move_the_teachers_ratio_and_leave_the_students_replay():
    """--shuffle-agents with --stale-epoch-memory (magpo_sable.py's helpers; the unit tests are there): the
    teacher's ratio leaves 1 on each update's first minibatch, the students replay their rollout exactly."""
    args = ctds.Args(env_id="coordsum-3x10", num_seeds=1, num_envs=8, rollout_length=32, num_minibatches=2,
                     ppo_epochs=2, num_evals=2, num_eval_episodes=4, total_timesteps=2 * 2 * 8 * 32,
                     recurrent_chunk_size=8, embed_dim=16, hidden_dim=32, shuffle_agents=True, stale_epoch_memory=True)
    train = fast_jit(jax.vmap(ctds.make_train(args, envs.make(args.env_id))))
    h = jax.device_get(train(jnp.array([jax.random.PRNGKey(0)]), jnp.arange(1)))["history"]
    assert (h["loss/first_ratio_dev"] > 1e-4).all(), h["loss/first_ratio_dev"]
    assert (h["loss/first_actor_ratio_dev"] < 1e-5).all(), h["loss/first_actor_ratio_dev"]
    assert all(np.isfinite(v).all() for v in h.values())


@pytest.mark.parametrize("flags, message", [
    (["--delta", "1.2"], "Unrecognized"),
    (["--ctce"], "Unrecognized"),
    (["--lam", "-1"], "--lam must be non-negative"),
])
def test_cli_bad_input_is_one_line_and_exit_2(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "ctds.py"), *flags], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


def test_preset_paper_takes_magpos_row_without_delta_and_lambda():
    args = ctds.parse_args(["--env-id", "rware-tiny-4ag", "--preset", "paper"])
    assert (args.n_block, args.lr, args.embed_dim, args.lam) == (3, 0.0005, 128, 0.0)


SAME = ["TanhNormal", "policy_entropy", "ActionHead", "env_action",
        "Guider", "Retention", "EncodeBlock", "DecodeBlock", "SableHidden", "block_steps", "decay_rates",
        "positional_encoding", "map_policy", "Actor", "Transition", "compute_gae", "ppo_clip_objective",
        "make_networks", "make_optimizer", "make_evaluate", "parse_args",
        "reorder_agents", "next_memory_index", "group_minibatches", "normalize_groups"]


def test_ctds_is_magpo_sable_with_other_losses():
    """The diff ladder: the networks, the rollout's containers, evaluation and plumbing are the same text."""
    for name in SAME:
        assert inspect.getsource(getattr(ctds, name)) == inspect.getsource(getattr(ms, name)), name


def test_ctds_steps_its_minibatches_with_magpo_sables_code():
    """The microbatched minibatch step (from `def gather_and_update` to the update it returns) is magpo_sable.py's
    word for word, and the loss terms it sums are plain means over samples (two equal halves average to the
    whole), so test_magpo.py's microbatch test, run on Sable and MAT, covers ctds.py too."""
    def minibatch_step(module) -> list[str]:
        lines = inspect.getsource(module.make_train).splitlines()
        start = next(i for i, l in enumerate(lines) if "def gather_and_update(" in l)
        end = next(i for i in range(start, len(lines)) if "return minibatch_update(" in lines[i])
        return lines[start:end + 1]

    assert minibatch_step(ctds) == minibatch_step(ms)
    assert "microbatch_gradient" in "\n".join(minibatch_step(ms))
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    lp, old, adv, kl, v = (jax.random.normal(k[i], (8, 6)) * 0.3 for i in range(5))
    terms = [lambda a: ctds.student_objective(lp[a], old[a], adv[a], jnp.abs(kl[a]), 2.0, 0.2)[0],
             lambda a: ctds.teacher_objective(lp[a], old[a], adv[a], 0.2)[0],
             lambda a: ctds.clipped_value_loss(v[a], old[a], adv[a], 0.2)]
    for term in terms:
        np.testing.assert_allclose(term(slice(None)), (term(slice(0, 4)) + term(slice(4, 8))) / 2, rtol=1e-6)
