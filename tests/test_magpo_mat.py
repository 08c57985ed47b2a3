"""magpo_mat.py: MAT's teacher-forced log-probs against the auto-regressive sampling, the causality
of its decoder, the training loop's invariants and learning on CoordSum in one short run, --ctce, the
command line, and the diff ladder against magpo_sable.py (the learner's decentralisation is tested
for both guiders in test_magpo.py)."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import magpo_mat as mm
import magpo_sable as ms
from helpers import cli_env, error_lines, fast_jit, random_policy_return, randomised

ROOT = Path(__file__).resolve().parents[1]


def small_guider(continuous, num_agents=4, num_actions=5):
    return mm.Guider(num_agents, num_actions, continuous, width=16, n_head=2, n_block=2)


def batch(continuous, B=6, A=4, D=7, K=5, seed=0):
    rng = np.random.default_rng(seed)
    obs = jnp.array(rng.normal(size=(B, A, D)), jnp.float32)
    mask = rng.random((B, A, K)) < 0.6
    mask[..., 1] = True
    action0 = jnp.zeros((1, B, A, K)) if continuous else jnp.zeros((1, B, A), jnp.int32)
    return obs, jnp.array(mask), action0


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_teacher_forced_log_probs_equal_the_autoregressive_sampling(continuous):
    """The update's one parallel decoder pass, fed the sampled actions shifted by one agent, gives
    every agent the log-prob (and value) the sampling loop gave it, one agent after another."""
    guider = small_guider(continuous)
    obs, mask, action0 = batch(continuous)
    B = obs.shape[0]
    no_reset, no_steps = jnp.zeros((1, B), bool), jnp.zeros((1, B), jnp.int32)
    params = randomised(guider.init(jax.random.PRNGKey(0), (), obs[None], action0, no_reset, no_steps, mask[None]),
                        jax.random.PRNGKey(1))
    act = fast_jit(lambda k: guider.apply(params, (), obs, no_reset[0], no_steps[0], mask, k, method=mm.Guider.act))
    action, log_prob, value, hidden = act(jax.random.PRNGKey(2))
    assert hidden == ()  # MAT carries no memory across steps
    if not continuous:
        assert np.take_along_axis(np.asarray(mask), np.asarray(action)[..., None], -1).all()  # masks honoured
        assert len(np.unique(np.asarray(action))) > 1
    replayed_value, pi = guider.apply(params, (), obs[None], action[None], no_reset, no_steps, mask[None])
    np.testing.assert_allclose(pi.log_prob(action[None])[0], log_prob, atol=1e-5)
    np.testing.assert_allclose(replayed_value[0], value, atol=1e-5)
    # greedy acting picks each agent's most likely action given the greedy choices before it
    greedy, _, _, _ = guider.apply(params, (), obs, no_reset[0], no_steps[0], mask, jax.random.PRNGKey(3), True,
                                   method=mm.Guider.act)
    _, pi = guider.apply(params, (), obs[None], greedy[None], no_reset, no_steps, mask[None])
    np.testing.assert_allclose(pi.mode()[0], greedy, atol=1e-5)  # float rounding of the two passes, as above


def test_decoder_reads_only_the_actions_before_each_agent():
    """Agent i's policy moves with the action of an agent before it, never with its own or a later one's."""
    guider = small_guider(False)
    obs, mask, _ = batch(False)
    B, A = obs.shape[:2]
    rng = np.random.default_rng(1)
    actions = jnp.array(rng.integers(0, 5, size=(1, B, A)), jnp.int32)
    no_reset, no_steps = jnp.zeros((1, B), bool), jnp.zeros((1, B), jnp.int32)
    params = randomised(guider.init(jax.random.PRNGKey(0), (), obs[None], actions, no_reset, no_steps, mask[None]),
                        jax.random.PRNGKey(1))
    logits = fast_jit(lambda a: guider.apply(params, (), obs[None], a, no_reset, no_steps, mask[None])[1].logits)
    base = logits(actions)
    for changed in range(A):
        other = logits(actions.at[..., changed].add(1) % 5)
        np.testing.assert_array_equal(other[..., :changed + 1, :], base[..., :changed + 1, :])  # itself and before
        if changed + 1 < A:
            assert not np.allclose(other[..., changed + 1:, :], base[..., changed + 1:, :])  # after it


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
def test_learner_learns_coordsum_with_aligned_replays():
    """One short run: ratios are exactly 1 on every update's first minibatch (guider μ/μ_old, and the
    learner's replayed log-probs against the rollout's, chunks of 16 steps replayed from stored GRU
    states with episode ends inside), and the learner beats a random policy by far. (That a seed gives
    the same run again is tested on magpo_sable.py's make_train, which is this script's text.)"""
    random_return = random_policy_return("coordsum-3x10")
    args = mm.Args(env_id="coordsum-3x10", num_seeds=1, num_envs=16, rollout_length=64, recurrent_chunk_size=16,
                   num_minibatches=2, ppo_epochs=4, num_evals=2, num_eval_episodes=32, total_timesteps=2 * 30 * 1024,
                   lr=1e-3, embed_dim=32, delta=1.3, lam=2.0, shuffle_agents=False)  # replays that align exactly
    train = jax.jit(jax.vmap(mm.make_train(args, envs.make(args.env_id))))
    keys, seeds = jnp.array([jax.random.PRNGKey(0)]), jnp.arange(1)
    out = jax.device_get(train(keys, seeds))
    h = out["history"]
    assert (h["loss/first_ratio_dev"] < 1e-5).all(), h["loss/first_ratio_dev"]
    assert (h["loss/first_actor_ratio_dev"] < 1e-5).all(), h["loss/first_actor_ratio_dev"]
    for k in ("loss/kl", "loss/guider_kl", "magpo/mask_frac", "magpo/abs_log_ratio", "guider/episode_return"):
        assert np.isfinite(h[k]).all()
    curve = h["eval/episode_return"].mean(-1)[0]  # the decentralised learner
    assert curve[-1] > 3 * random_return, (curve, random_return)


def test_ctce_minibatches_are_single_time_steps_as_mats():
    """--ctce trains on single time steps of all environments shuffled together (mava's mat.py merges time
    and environments before its permutation); that is exact because MAT carries no memory across steps: a
    rollout's log-probs and values are the same whether it is fed as sequences or as single steps. With a
    learner (a GRU) the minibatches stay whole sequences."""
    mat, magpo = mm.parse_args(["--ctce", "--num-minibatches", "4"]), mm.parse_args(["--num-minibatches", "4"])
    assert (mat.chunk_size, mat.minibatch_sequences) == (1, 128 * 128 // 4)
    assert (magpo.chunk_size, magpo.minibatch_sequences) == (128, 128 // 4)
    assert mm.parse_args(["--ctce", "--recurrent-chunk-size", "32"]).chunk_size == 32  # explicit flags win
    guider = small_guider(False)
    T, B = 5, 3
    obs, mask, _ = batch(False, B=T * B)
    rng = np.random.default_rng(1)
    action = jnp.array(np.argmax(np.where(np.asarray(mask), rng.random(mask.shape), -1), -1), jnp.int32)
    reset = jnp.array(rng.random(T * B) < 0.3)
    steps = jnp.array(rng.integers(0, 10, T * B), jnp.int32)
    params = randomised(guider.init(jax.random.PRNGKey(0), (), obs[None], action[None], reset[None], steps[None],
                                    mask[None]), jax.random.PRNGKey(1))
    as_steps = guider.apply(params, (), obs[None], action[None], reset[None], steps[None], mask[None])
    sequence = lambda x: x.reshape(T, B, *x.shape[1:])
    as_sequences = guider.apply(params, (), sequence(obs), sequence(action), sequence(reset), sequence(steps),
                                sequence(mask))
    np.testing.assert_allclose(as_sequences[0].reshape(-1, 4), as_steps[0][0], atol=1e-6)
    np.testing.assert_allclose(as_sequences[1].log_prob(sequence(action)).reshape(-1, 4),
                               as_steps[1].log_prob(action[None])[0], atol=1e-6)


# --------------------------------------------------------------------------------------------------
# The command line, the preset, the diff ladder
# --------------------------------------------------------------------------------------------------
def run_cli(*flags, cwd):
    return subprocess.run([sys.executable, str(ROOT / "magpo_mat.py"), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=cli_env())


def test_cli_ctce_trains_saves_and_reloads_mat(tmp_path):
    """--ctce: MAT alone, plain PPO, and MAT is what is evaluated, saved and reloaded (into the guider's
    template: the learner's would not fit)."""
    flags = ["--env-id", "coordsum-3x10", "--num-seeds", "2", "--num-envs", "4", "--rollout-length", "16",
             "--num-minibatches", "1", "--ppo-epochs", "1", "--num-evals", "2", "--num-eval-episodes", "2",
             "--total-timesteps", str(2 * 4 * 16), "--embed-dim", "16", "--hidden-dim", "32", "--ctce",
             "--no-shuffle-agents"]  # the rollout's agent order: the first minibatch's ratios are exactly 1
    proc = run_cli(*flags, "--out-dir", "out", "--run-name", "r", "--save-model", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("mat on <coordsum-3x10")
    assert len([l for l in proc.stdout.splitlines() if l.startswith("[")]) == 2
    run = tmp_path / "out" / "r"
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss/first_ratio_dev"] < 1e-5 for r in rows)
    assert not {"loss/kl", "magpo/mask_frac", "guider/episode_return"} & set(rows[0])  # no learner
    marl = json.loads((run / "marl_eval.json").read_text())
    assert len(marl["coordsum"]["coordsum-3x10"]["mat"]["seed_1"]["absolute_metrics"]["episode_return"]) == 20
    evaluated = run_cli("--eval-from", str(run), "--num-eval-episodes", "4", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.count("coordsum-3x10 return") == 2
    wrong = subprocess.run([sys.executable, str(ROOT / "magpo_sable.py"), "--eval-from", str(run)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600, env=cli_env())
    assert wrong.returncode == 2 and "trained by magpo_mat.py" in wrong.stderr


@pytest.mark.parametrize("flags, message", [
    (["--delta", "0.9"], "--delta must be greater than 1"),
    (["--embed-dim", "30", "--n-head", "4"], "must be a multiple of --n-head"),
    (["--decay-scaling-factor", "0.5"], "Unrecognized options: --decay-scaling-factor"),
    (["--env-id", "rware-tiny-4ag", "--preset", "paper"], "no mat configuration for rware-tiny-4ag"),
])
def test_cli_bad_input_is_one_line_and_exit_2(flags, message, tmp_path):
    proc = run_cli(*flags, cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]


def test_preset_paper_gives_the_mat_row_with_magpos_delta_and_lambda():
    mat = mm.parse_args(["--env-id", "coordsum-3x10", "--preset", "paper", "--ctce"])
    assert (mat.num_minibatches, mat.max_grad_norm, mat.embed_dim, mat.ppo_epochs) == (1, 10.0, 64, 5)
    assert (mat.clip_eps, mat.n_head, mat.ent_coef, mat.n_block, mat.lr) == (0.2, 4, 0.001, 2, 0.00025)
    magpo = mm.parse_args(["--env-id", "coordsum-3x10", "--preset", "paper", "--lam", "4"])
    assert (magpo.embed_dim, magpo.n_block, magpo.delta, magpo.lam) == (64, 2, 1.3, 4.0)


def test_magpo_mat_is_magpo_sable_with_another_guider():
    """The diff ladder: everything but the guider network and its flags is the same text."""
    guider_only = {"Guider", "EncodeBlock", "DecodeBlock", "zero_guider_hidden", "Args", "check_args",
                   "apply_preset", "system_name", "make_networks"}
    shared = [name for name, obj in vars(ms).items()
              if inspect.isfunction(obj) or inspect.isclass(obj) and obj.__module__ == ms.__name__]
    shared = [name for name in shared if name not in guider_only and hasattr(mm, name)]
    assert {"make_train", "make_evaluate", "guider_objective", "actor_objective", "evaluate_saved",
            "main", "Transition", "RunnerState"} <= set(shared)
    for name in shared:
        assert inspect.getsource(getattr(mm, name)) == inspect.getsource(getattr(ms, name)), name


def test_defaults_are_mavas_mat_configuration():
    """mava/configs/system/mat/mat.yaml: lr 5e-4, 5 epochs x 1 minibatch, clip 0.1, gradient norm 5
    (the paper takes MAGPO's base settings from its guider's CTCE method, so MAGPO-MAT shares them)."""
    args = mm.Args()
    assert (args.lr, args.ppo_epochs, args.num_minibatches, args.clip_eps, args.max_grad_norm) == (5e-4, 5, 1, 0.1, 5.0)
    assert (args.gamma, args.gae_lambda, args.ent_coef, args.vf_coef) == (0.99, 0.95, 0.01, 0.5)
