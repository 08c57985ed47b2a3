"""ippo.py and mappo.py: the pure math on hand-computed values, the training loop's invariants,
learning on CoordSum, determinism across seed batching, and the command line."""

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
import runs
from helpers import cli_env, error_lines, fast_jit, random_policy_return
import ippo
import mappo

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"ippo": ippo, "mappo": mappo}


# --------------------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------------------
def gae_reference(rewards, values, dones, last_value, gamma, lam):
    T = len(rewards)
    advantages = np.zeros(T)
    gae, next_value = 0.0, last_value
    for t in reversed(range(T)):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        gae = delta + gamma * lam * not_done * gae
        advantages[t] = gae
        next_value = values[t]
    return advantages


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS)
def test_compute_gae_matches_a_python_loop_with_episode_ends(script):
    rng = np.random.default_rng(0)
    T, E = 12, 3
    rewards = rng.normal(size=(T, E)).astype(np.float32)
    values = rng.normal(size=(T, E)).astype(np.float32)
    dones = np.zeros((T, E), np.float32)
    dones[3, 0] = dones[7, 0] = dones[11, 1] = dones[0, 2] = 1.0  # ends inside and at the edges
    last_value = rng.normal(size=E).astype(np.float32)
    adv, targets = script.compute_gae(jnp.array(rewards), jnp.array(values), jnp.array(dones),
                                      jnp.array(last_value), 0.99, 0.9)
    for e in range(E):
        expected = gae_reference(rewards[:, e], values[:, e], dones[:, e], last_value[e], 0.99, 0.9)
        np.testing.assert_allclose(adv[:, e], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, np.asarray(adv) + values, rtol=1e-6)
    # nothing flows across an episode end: the step that ended env 0's episode sees only its reward
    np.testing.assert_allclose(adv[3, 0], rewards[3, 0] - values[3, 0], rtol=1e-6)


def test_compute_gae_by_hand():
    # two steps, gamma 0.5, lambda 1, no ends: delta1 = 1 + 0.5*4 - 2 = 1; delta0 = 0 + 0.5*2 - 1 = 0
    # A1 = 1, A0 = delta0 + 0.5*A1 = 0.5
    adv, targets = ippo.compute_gae(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]),
                                    jnp.array(4.0), 0.5, 1.0)
    np.testing.assert_allclose(adv, [0.5, 1.0])
    np.testing.assert_allclose(targets, [1.5, 3.0])


def test_ppo_clip_objective_by_hand():
    # ratios e^0.5 = 1.6487 (clipped to 1.2 with A>0), e^-0.5 = 0.6065 (A<0: clipped 0.8 is larger,
    # so the min keeps the unclipped 0.6065 * -1 ... min(-0.6065, -0.8) = -0.8), 1 (A=2)
    log_prob = jnp.array([0.5, -0.5, 0.0])
    old = jnp.zeros(3)
    advantages = jnp.array([1.0, -1.0, 2.0])
    loss, approx_kl, clip_frac = ippo.ppo_clip_objective(log_prob, old, advantages, 0.2)
    expected = -np.mean([1.2 * 1.0, -0.8, 2.0])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(clip_frac, 2 / 3, rtol=1e-6)
    r = np.exp([0.5, -0.5, 0.0])
    np.testing.assert_allclose(approx_kl, np.mean((r - 1) - np.log(r)), rtol=1e-5)
    # gradient: zero where the clip is active and the advantage pushes further out
    grad = jax.grad(lambda lp: ippo.ppo_clip_objective(lp, old, advantages, 0.2)[0])(log_prob)
    assert grad[0] == 0.0 and grad[1] == 0.0 and grad[2] == pytest.approx(-2.0 / 3)


def test_clipped_value_loss_by_hand():
    value, old, target = jnp.array([2.0, 0.0]), jnp.array([1.0, 0.0]), jnp.array([3.0, 1.0])
    # env 0: unclipped (2-3)^2 = 1, clipped 1+0.2 -> (1.2-3)^2 = 3.24 -> max 3.24; env 1: 1 and 1
    np.testing.assert_allclose(ippo.clipped_value_loss(value, old, target, 0.2), 0.5 * (3.24 + 1) / 2)


def test_keep_best_takes_the_later_checkpoint_on_ties():
    """Mava's absolute metric keeps the latest of equally good checkpoints (its `<=`)."""
    best = {"w": jnp.zeros(2)}
    params, ret = mappo.keep_best(best, jnp.float32(-jnp.inf), {"w": jnp.ones(2)}, jnp.float32(3.0))
    assert float(ret) == 3.0 and (params["w"] == 1).all()
    params, ret = mappo.keep_best(params, ret, {"w": jnp.full(2, 2.0)}, jnp.float32(3.0))  # a tie
    assert float(ret) == 3.0 and (params["w"] == 2).all()
    params, ret = mappo.keep_best(params, ret, {"w": jnp.full(2, 5.0)}, jnp.float32(2.0))  # worse
    assert float(ret) == 3.0 and (params["w"] == 2).all()


@pytest.mark.parametrize("continuous", [False, True])
def test_masked_actions_are_never_sampled(continuous):
    rng = np.random.default_rng(1)
    B, K = 512, 7
    mask = rng.random((1, B, K)) < 0.4
    mask[..., 0] |= ~mask.any(-1)  # at least one legal action
    actor = ippo.Actor(K, continuous)
    obs = jnp.array(rng.normal(size=(1, B, 5)), jnp.float32)
    hidden = jnp.zeros((B, 128))
    params = actor.init(jax.random.PRNGKey(0), hidden, obs, jnp.zeros((1, B), bool), jnp.array(mask))
    # large random logits so that illegal actions would be likely if the mask were ignored
    params = jax.tree_util.tree_map(lambda x: x * 50.0, params)
    _, pi = actor.apply(params, hidden, obs, jnp.zeros((1, B), bool), jnp.array(mask))
    actions = pi.sample(seed=jax.random.PRNGKey(1), sample_shape=(64,))
    if continuous:
        assert actions.shape == (64, 1, B, K)  # the mask does not apply to continuous actions
        assert (np.abs(actions) <= 1.0).all()  # squashed, as the env gets them
        assert np.isfinite(pi.log_prob(actions[0])).all()  # saturated ones included (the ±0.999 clip)
        return
    legal = np.take_along_axis(np.broadcast_to(mask, (64, 1, B, K)), np.asarray(actions)[..., None], -1)
    assert legal.all()
    assert np.isfinite(pi.log_prob(actions[0])).all()


# --------------------------------------------------------------------------------------------------
# The continuous policy: Mava's tanh-squashed Normal (mava/networks/heads.py, distributions.py). Every
# script has the same text (test_magpo, test_ctds and test_magpo_mat check it); the MAT guider's head
# alone has no min std (test_magpo's decoder-token test). The Mava values below were computed by the released code's
# TanhTransformedDistribution (tensorflow-probability 0.24, jax 0.4.30, jax_threefry_partitionable on,
# as jax >= 0.5's default) on the same inputs and key.
# --------------------------------------------------------------------------------------------------
LOC = jnp.array([[0.0, 0.5], [2.0, -1.0]])
SCALE = jnp.array([[0.6941472, 0.6941472], [0.5, 1.2]])


def normal_log_sf(z):  # log P(Z >= z), Z ~ N(0, 1)
    return math.log(0.5 * math.erfc(z / math.sqrt(2.0)))


def test_continuous_head_std_at_init_is_softplus_zero_plus_min_std():
    actor = ippo.Actor(5, True)
    obs, hidden, reset = jnp.ones((1, 3, 4)), jnp.zeros((3, 128)), jnp.zeros((1, 3), bool)
    params = actor.init(jax.random.PRNGKey(0), hidden, obs, reset, jnp.ones((1, 3, 5), bool))
    head = params["params"]["ActionHead_0"]
    np.testing.assert_array_equal(head["log_std"], np.zeros(5))  # state-independent, one per action dimension
    _, pi = actor.apply(params, hidden, obs, reset, jnp.ones((1, 3, 5), bool))
    assert isinstance(pi, ippo.TanhNormal) and pi.scale.shape == (1, 3, 5)
    np.testing.assert_allclose(pi.scale, math.log(2.0) + 1e-3, rtol=1e-6)  # softplus(0) + 1e-3 = 0.69414718


def test_tanh_normal_log_prob_by_hand_clipped_at_0999():
    pi = ippo.TanhNormal(LOC, SCALE)
    action = jnp.array([[0.3, -0.5], [0.9995, -1.0]])  # the second row beyond the clip on both sides

    def inside(a, loc, scale):  # log N(atanh a; loc, scale) - log(1 - a^2)
        x = math.atanh(a)
        return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi) - math.log(1 - a * a)

    edge, log_width = float(np.arctanh(np.float32(0.999))), math.log(1e-3)  # float32's 0.999, as Mava's
    by_hand = [inside(0.3, 0.0, 0.6941472) + inside(-0.5, 0.5, 0.6941472),
               normal_log_sf((edge - 2.0) / 0.5) - log_width + normal_log_sf((edge - 1.0) / 1.2) - log_width]
    np.testing.assert_allclose(pi.log_prob(action), by_hand, rtol=2e-5)
    np.testing.assert_allclose(pi.log_prob(action), [-1.9676948, 0.44371843], rtol=1e-6)  # Mava's
    # at the clip and beyond it: the same tail mass; exactly ±1 (a saturated float32 tanh) stays finite
    for a in (0.999, 0.9995, 1.0):
        np.testing.assert_allclose(pi.log_prob(jnp.array([[0.3, -0.5], [a, 0.2]]))[1], -3.4024827, rtol=1e-6)
    grads = jax.grad(lambda loc: pi._replace(loc=loc).log_prob(jnp.array([[1.0, -1.0], [1.0, -1.0]])).sum())(LOC)
    assert np.isfinite(grads).all() and (np.asarray(grads[:, 0]) > 0).all()  # more mass beyond +0.999 as loc grows


def test_tanh_normal_entropy_is_the_one_sample_estimate_with_the_tanh_log_det():
    pi, key = ippo.TanhNormal(LOC, SCALE), jax.random.PRNGKey(3)
    x = np.asarray(LOC + SCALE * jax.random.normal(key, LOC.shape))  # the draw from that key, before tanh
    by_hand = (0.5 * np.log(2 * np.pi * np.e) + np.log(np.asarray(SCALE)) + np.log(1 - np.tanh(x) ** 2)).sum(-1)
    np.testing.assert_allclose(pi.entropy(key), by_hand, rtol=1e-5)
    np.testing.assert_allclose(pi.entropy(key), [-0.6016011, -2.1637836], rtol=1e-5)  # Mava's
    assert ippo.policy_entropy(pi, key).shape == (2,)
    # the same draw further into saturation is penalised, and the estimate is differentiable in loc
    assert (pi._replace(loc=LOC + 3.0).entropy(key) < pi.entropy(key)).all()
    assert np.isfinite(jax.grad(lambda loc: pi._replace(loc=loc).entropy(key).sum())(LOC)).all()


def test_tanh_normal_mode_sample_and_closed_form_normal_kl():
    pi, key = ippo.TanhNormal(LOC, SCALE), jax.random.PRNGKey(3)
    np.testing.assert_allclose(pi.mode(), np.tanh(np.asarray(LOC)), rtol=1e-6)  # the greedy action
    draw = LOC + SCALE * jax.random.normal(key, LOC.shape)
    action, log_prob = pi.sample_and_log_prob(key)
    np.testing.assert_allclose(action, np.tanh(np.asarray(draw)), rtol=1e-6)
    np.testing.assert_allclose(log_prob, pi.log_prob(action))
    other = ippo.TanhNormal(LOC + 0.25, SCALE * 1.3)
    s1, s2, dm = np.asarray(SCALE), np.asarray(SCALE) * 1.3, 0.25
    by_hand = (np.log(s2 / s1) + (s1 ** 2 + dm ** 2) / (2 * s2 ** 2) - 0.5).sum(-1)
    np.testing.assert_allclose(pi.kl_divergence(other), by_hand, rtol=1e-5)
    np.testing.assert_allclose(pi.kl_divergence(other), [0.19319655, 0.20325007], rtol=1e-5)  # tfd's, on Mava's


def test_continuous_actions_go_to_mpe_unchanged():
    env = envs.make("mpe-simple_spread_3ag")
    action = jnp.array([[-1.0, -0.3, 0.0, 0.7, 1.0]] * 3)
    np.testing.assert_array_equal(ippo.env_action(env, action), action)  # Mava sends the squashed action as is


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
TINY = dict(env_id="coordsum-3x10", num_envs=8, rollout_length=32, num_minibatches=2, ppo_epochs=2,
            num_evals=2, num_eval_episodes=4, total_timesteps=2 * 2 * 8 * 32, recurrent_chunk_size=8)


@lru_cache(maxsize=None)
def compiled_train(name, num_seeds, **overrides):
    script = SCRIPTS[name]
    args = script.Args(**{**TINY, **overrides}, num_seeds=num_seeds)
    train = jax.vmap(script.make_train(args, envs.make(args.env_id)))
    # the tiny runs take far less time than their compilation; the learning run the other way round
    return fast_jit(train) if args.total_timesteps <= TINY["total_timesteps"] else jax.jit(train)


def run_train(name, num_seeds, seed=0, **overrides):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(num_seeds))
    return jax.device_get(compiled_train(name, num_seeds, **overrides)(keys, jnp.arange(num_seeds)))


@pytest.mark.parametrize("name", SCRIPTS)
def test_first_minibatch_ratio_is_one_and_seeds_batch_deterministically(name):
    # Chunks of 8 steps replayed from stored GRU states; CoordSum episodes (100 steps) end inside
    # the 32-step rollouts, so resets fall inside chunks too: any misalignment shows as ratio != 1.
    single = run_train(name, 1, seed=0)
    dev = single["history"]["loss/first_ratio_dev"]
    assert dev.shape == (1, TINY["num_evals"]) and (dev < 1e-5).all(), dev
    assert single["history"]["episodes"].sum() > 0
    # same seed -> identical metrics
    key = "eval/episode_return"
    np.testing.assert_array_equal(run_train(name, 1, seed=0)["history"][key], single["history"][key])
    # seed i of a 3-seed run has the keys of seed i alone (fold_in(PRNGKey(seed), i)): seed 0's first
    # checkpoint equals the 1-seed run's up to float rounding (the --seed help text says exactly this)
    batched = run_train(name, 3, seed=0)
    np.testing.assert_allclose(batched["history"][key][0, 0], single["history"][key][0, 0], atol=1e-4)
    np.testing.assert_allclose(batched["history"]["loss/value"][0, 0], single["history"]["loss/value"][0, 0],
                               rtol=1e-3)
    assert (batched["history"]["loss/first_ratio_dev"] < 1e-5).all()
    # different seeds differ
    losses = batched["history"]["loss/actor"][:, 0]
    assert len(set(np.round(losses, 7).tolist())) == 3


@pytest.mark.parametrize("name", SCRIPTS)
def test_learns_coordsum_beyond_a_random_policy(name):
    random_return = random_policy_return("coordsum-3x10")
    assert 2.0 < random_return < 8.0  # about 100 steps x P(hit) 0.022 x ~1.9
    # a small, fast configuration (16 envs x 64 steps, lr 1e-3): about 33 after 31k steps, 70 after 61k,
    # 107 after 123k
    out = run_train(name, 1, recurrent_chunk_size=None, num_envs=16, rollout_length=64, num_minibatches=2, ppo_epochs=4,
                    num_evals=2, num_eval_episodes=32, total_timesteps=2 * 15 * 1024, lr=1e-3)
    curve = out["history"]["eval/episode_return"].mean(-1)[0]
    assert curve[-1] > 3 * random_return, (curve, random_return)
    assert curve[-1] > curve[0]
    assert out["absolute/episode_return"].shape == (1, 10 * 32)


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------
def run_cli(name, *flags, cwd):
    return subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=cli_env())


CLI_TINY = ["--env-id", "coordsum-3x10", "--num-seeds", "2", "--num-envs", "4", "--rollout-length", "16",
            "--num-minibatches", "1", "--ppo-epochs", "1", "--num-evals", "2", "--num-eval-episodes", "2",
            "--total-timesteps", str(2 * 4 * 16)]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """name -> (folder, CompletedProcess) of CLI_TINY with --save-model, run once per module (the
    seed-sharding test compares its own run against mappo's)."""
    done = {}

    def run(name):
        if name not in done:
            folder = tmp_path_factory.mktemp(f"cli_{name}")
            done[name] = folder, run_cli(name, *CLI_TINY, "--out-dir", "out", "--run-name", "r", "--save-model",
                                         cwd=folder)
        return done[name]

    return run


def per_seed_returns(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {(r["checkpoint"], r["seed_index"]): r["eval/episode_returns"] for r in rows}


@pytest.mark.parametrize("name", SCRIPTS)
def test_cli_trains_streams_results_saves_and_reloads(name, cli_runs, tmp_path):
    folder, proc = cli_runs(name)
    assert proc.returncode == 0, proc.stderr[-2000:]
    progress = [l for l in proc.stdout.splitlines() if l.startswith("[")]
    assert len(progress) == 2 and "eval return" in progress[0] and "eta" in progress[0]
    assert "devices" not in proc.stdout  # one device: nothing to split
    run = folder / "out" / "r"
    assert sorted(per_seed_returns(run)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    marl = json.loads((run / "marl_eval.json").read_text())
    seeds = marl["coordsum"]["coordsum-3x10"][name]
    assert set(seeds) == {"seed_0", "seed_1"}
    assert len(seeds["seed_0"]["absolute_metrics"]["episode_return"]) == 20
    assert json.loads((run / "config.json").read_text())["algo"] == name
    # a second run with the same name does not overwrite the first
    args = SCRIPTS[name].Args(out_dir=str(folder / "out"), run_name="r")
    assert runs.make_run_dir(args, name) == folder / "out" / "r-2"
    assert (run / "metrics.jsonl").exists()
    # reload the saved actors and evaluate them
    models = sorted(p.name for p in (run / "models").iterdir())
    assert models == ["seed_0_best.msgpack", "seed_0_final.msgpack", "seed_1_best.msgpack", "seed_1_final.msgpack"]
    evaluated = run_cli(name, "--eval-from", str(run), "--num-eval-episodes", "4", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.count("coordsum-3x10 return") == 2
    other = "mappo" if name == "ippo" else "ippo"
    wrong = run_cli(other, "--eval-from", str(run), cwd=tmp_path)
    assert wrong.returncode == 2 and f"trained by {name}.py" in wrong.stderr


def test_seeds_split_across_devices_train_the_same_run(cli_runs, tmp_path):
    """With two (forced host) devices the seeds are sharded across them: the same per-seed results as
    on one device (mappo's command-line run above), and every seed's progress still streams out."""
    env = cli_env("--xla_force_host_platform_device_count=2")
    proc = subprocess.run([sys.executable, str(ROOT / "mappo.py"), *CLI_TINY, "--out-dir", "out", "--run-name", "two"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seeds split across 2 devices" in proc.stdout
    two = per_seed_returns(tmp_path / "out" / "two")
    assert sorted(two) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    folder, one = cli_runs("mappo")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two == per_seed_returns(folder / "out" / "r")


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "rware-tiny-4agg"], "valid ids, closest first: rware-tiny-4ag"),
    (["--bogus-flag", "3"], "Unrecognized"),
    (["--num-envs", "many"], "--num-envs"),
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--num-envs", "6", "--num-minibatches", "4"], "must divide"),
    (["--total-timesteps", "1000"], "too small for 122 evaluations"),
    (["--preset", "tuned"], "invalid choice 'tuned' for argument '--preset'"),
    (["--env-id", "rware-tiny-4ag", "--preset", "paper"], "no ippo configuration"),
    (["--ent-coef", "nan"], "--ent-coef must be a finite number, got nan"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--run-name", "../elsewhere"], "--run-name must be a plain folder name"),
    (["--run-name", ".."], "--run-name must be a plain folder name"),
])
def test_cli_bad_input_is_one_line_and_exit_2(flags, message, tmp_path):
    proc = run_cli("ippo", *flags, cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("script", ["ippo", "mappo", "magpo_sable", "magpo_mat", "ctds"])
def test_cli_out_dir_that_cannot_be_created_is_one_line_and_exit_2(script, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    proc = run_cli(script, *CLI_TINY, "--out-dir", "a_file/runs", cwd=tmp_path)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: --out-dir a_file/runs: cannot create the run folder"), lines[0]
    nan = run_cli(script, "--ent-coef", "nan", cwd=tmp_path)  # every script refuses non-finite values
    assert nan.returncode == 2 and "--ent-coef must be a finite number" in error_lines(nan)[0]


def test_preset_paper_gives_the_tuned_row_and_flags_override():
    args = ippo.parse_args(["--env-id", "coordsum-5x20", "--preset", "paper", "--ppo-epochs", "3"])
    assert (args.num_minibatches, args.max_grad_norm, args.clip_eps, args.ent_coef, args.lr) == (4, 10.0, 0.1, 0.01, 0.00025)
    assert args.ppo_epochs == 3  # explicit flag wins over the csv's 8
    assert mappo.parse_args(["--env-id", "coordsum-3x10", "--preset", "paper"]).clip_eps == 0.05


def test_ippo_and_mappo_differ_only_in_the_critic_input_and_their_names():
    """The diff ladder: mappo.py is ippo.py with the critic reading the global state."""
    import difflib

    ippo_lines = (ROOT / "ippo.py").read_text().splitlines()
    mappo_lines = (ROOT / "mappo.py").read_text().splitlines()
    changed = [l[1:] for l in difflib.unified_diff(ippo_lines, mappo_lines, n=0, lineterm="")
               if l[:1] in "+-" and not l.startswith(("+++", "---"))]
    code = [l for l in changed if l.strip() and not l.lstrip().startswith(("#", '"""'))
            and "IPPO" not in l and "MAPPO" not in l and "python ippo.py" not in l and "python mappo.py" not in l
            and "differs from" not in l.lower() and "critic sees" not in l and "own state" not in l
            and "parameters can still" not in l]
    assert sorted(code) == sorted(['ALGO = "ippo"', 'ALGO = "mappo"',
                                   "    return timestep.obs", "    state = timestep.global_state",
                                   "    return jnp.broadcast_to(state[..., None, :], "
                                   "(*timestep.obs.shape[:-1], state.shape[-1]))"]), code


def test_cli_a_diverging_run_says_so_marks_its_rows_and_exits_1(tmp_path):
    """A learning rate of 1e30 sends every parameter to inf after the first checkpoint's update: the run
    names each seed and the first non-finite metrics at the checkpoint where it happens, writes its later
    rows as diverged (no numbers computed from nan), keeps the best checkpoint before it as the absolute
    metric, and ends with one summary line and exit code 1."""
    flags = [*CLI_TINY[:-2], "--total-timesteps", str(3 * 4 * 16), "--hidden-dim", "16"]
    flags[flags.index("--num-evals") + 1] = "3"
    proc = run_cli("ippo", *flags, "--lr", "1e30", "--out-dir", "out", "--run-name", "r", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)  # one line per seed where it diverged, then the summary
    assert [l.split(" diverged at")[0] for l in lines[:-1]] == ["seed 0", "seed 1"] and "params/max_abs" in lines[0]
    assert lines[-1].startswith("error: 2 of 2 seeds diverged: seed 0 at checkpoint "), lines
    rows = [json.loads(l) for l in (tmp_path / "out" / "r" / "metrics.jsonl").read_text().splitlines()]
    first = min(r["checkpoint"] for r in rows if r.get("diverged"))
    assert all(bool(r.get("diverged")) == (r["checkpoint"] >= first) for r in rows) and first >= 1
    assert all(set(r) == {"checkpoint", "step", "seed", "seed_index", "diverged"} for r in rows if r.get("diverged"))
    summary = json.loads((tmp_path / "out" / "r" / "absolute_metric.json").read_text())
    assert set(summary["diverged"]) == {"0", "1"} and all(map(math.isfinite, summary["absolute/episode_return"]))
