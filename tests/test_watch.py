"""watch.py: a saved policy reloads exactly, plays the script's own evaluation (the --eval-from
numbers), renders every family to a GIF on the CPU, and bad run folders are one-line errors."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import envs
from runs import save_models
from helpers import FAST_COMPILE, error_lines, fast_jit, write_config
import magpo_sable
import mappo
import watch

ROOT = Path(__file__).resolve().parents[1]
TASK = "coordsum-3x10"
# Tiny networks: nothing here trains, and every test compiles its own programs.
RUNS = {
    "mappo": (mappo, mappo.Args(env_id=TASK, num_seeds=2, hidden_dim=16)),
    "sable": (magpo_sable, magpo_sable.Args(env_id=TASK, num_seeds=2, hidden_dim=16, ctce=True, embed_dim=16)),
}
def random_params(init, seed):
    """Parameters of the shapes `init(key)` makes, drawn at random: no network is run (compiling an
    init costs seconds), and random logits tell policies apart better than an initialisation does."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda x: (0.5 * rng.normal(size=x.shape)).astype(x.dtype), shapes)


def saved_shapes(module, args, env):
    """`init(key)` of the policy a run saves, as the script's evaluate_saved makes its template
    (for --ctce, the guider through its training call)."""
    actor, guider = module.make_networks(args, env)
    A = env.num_agents
    if getattr(args, "ctce", False):
        return lambda key: guider.init(key, module.zero_guider_hidden(args, 1), jnp.zeros((1, 1, A, env.obs_dim)),
                                       jnp.zeros((1, 1, A), jnp.int32), jnp.zeros((1, 1), bool),
                                       jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, A, env.num_actions), bool))
    return lambda key: actor.init(key, jnp.zeros((A, args.hidden_dim)), jnp.zeros((1, A, env.obs_dim)),
                                  jnp.zeros((1, A), bool), jnp.ones((1, A, env.num_actions), bool))


def save_run(path: Path, module, args) -> dict:
    """A run folder as `--save-model` leaves it (config.json, models/ written by runs.save_models,
    as the script's main() calls it), with random parameters: -> {(seed, "best" | "final"): params}."""
    env = envs.make(args.env_id)
    path.mkdir(parents=True)
    write_config(path, module, args, env)
    init = saved_shapes(module, args, env)
    params = {(s, which): random_params(init, 2 * s + i)
              for s in range(args.num_seeds) for i, which in enumerate(("final", "best"))}
    stack = lambda which: jax.tree_util.tree_map(lambda *x: jnp.stack(x),
                                                 *[params[s, which] for s in range(args.num_seeds)])
    save_models(path, {"actor": stack("final"), "best_actor": stack("best")})
    return params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {name: (base / name, save_run(base / name, module, args)) for name, (module, args) in RUNS.items()}


# --------------------------------------------------------------------------------------------------
# Reloading
# --------------------------------------------------------------------------------------------------
def fixed_batch(env, E=4):
    """A fixed batch of observations of E environments (a reset, then one random step)."""
    def batch(key):
        state, _ = jax.vmap(env.reset)(jax.random.split(key, E))
        actions = jax.random.randint(key, (E, env.num_agents), 0, env.num_actions)
        return jax.vmap(env.step)(state, actions)

    key = jax.random.PRNGKey(0)
    return fast_jit(batch)(key)


def test_reload_gives_identical_action_distributions_actor(runs):
    path, saved = runs["mappo"]
    run = watch.load_run(path)
    assert run.module is mappo and not run.joint and run.args.hidden_dim == 16
    for s, which in [(0, "best"), (1, "final")]:
        _, params = watch.load_policy(run, s, which)
        jax.tree_util.tree_map(np.testing.assert_array_equal, params, saved[s, which])
        # the action distributions on a fixed batch of observations, against the saved parameters
        state, ts = fixed_batch(run.env)
        actor, _ = mappo.make_networks(run.args, run.env)
        A, H = run.env.num_agents, run.args.hidden_dim
        inputs = (jnp.zeros((4 * A, H)), mappo.agents_to_batch(ts.obs[None]), jnp.zeros((1, 4 * A), bool),
                  mappo.agents_to_batch(ts.action_mask[None]))
        logits = fast_jit(lambda p: actor.apply(p, *inputs)[1].logits)
        np.testing.assert_array_equal(logits(params), logits(saved[s, which]))
    # best and final are different files
    leaves = [jax.tree_util.tree_leaves(saved[0, which]) for which in ("best", "final")]
    assert any(not np.array_equal(a, b) for a, b in zip(*leaves))


def test_reload_gives_identical_action_distributions_ctce_guider(runs):
    # The saved guider was initialised through Sable's training call; watch.py makes its template
    # through Guider.act (the signature every guider shares): the same parameters.
    path, saved = runs["sable"]
    run = watch.load_run(path)
    assert run.module is magpo_sable and run.joint
    policy, params = watch.load_policy(run, 1, "best")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, saved[1, "best"])
    state, ts = fixed_batch(run.env)
    key = jax.random.PRNGKey(3)
    hidden = policy.init_hidden(4)
    _, guider = magpo_sable.make_networks(run.args, run.env)
    act = fast_jit(lambda p: guider.apply(p, hidden, ts.obs, ts.reset, state.step_count, ts.action_mask, key,
                                          method=magpo_sable.Guider.act))
    for ours, theirs in zip(act(params)[:3], act(saved[1, "best"])[:3]):  # actions, log-probs, values
        np.testing.assert_array_equal(ours, theirs)


def test_the_actor_acts_on_each_agents_own_observation_only(runs):
    run = watch.load_run(runs["mappo"][0])
    policy, params = watch.load_policy(run, 0, "best", greedy=True)
    state, ts = fixed_batch(run.env, E=1)
    changed = ts._replace(obs=ts.obs.at[:, 1:].add(5.0), global_state=ts.global_state + 5.0)
    hidden = policy.init_hidden(1)
    act = fast_jit(policy.act)
    (h, a), (h2, a2) = act(params, hidden, ts, state, None), act(params, hidden, changed, state, None)
    np.testing.assert_array_equal(h[0], h2[0])  # agent 0's memory and action: its own observation only
    np.testing.assert_array_equal(a[:, 0], a2[:, 0])
    assert not np.array_equal(h[1], h2[1])


# --------------------------------------------------------------------------------------------------
# Playing: the --eval-from numbers, and a GIF of the same episodes
# --------------------------------------------------------------------------------------------------
def test_watch_prints_the_eval_from_numbers_and_writes_a_gif(runs, tmp_path, capsys):
    path, _ = runs["mappo"]
    gif = tmp_path / "out.gif"
    watch.main([str(path), "--episodes", "3", "--seed", "5", "--gif", str(gif), "--max-frames", "3",
                "--gif-episodes", "2"])
    out = capsys.readouterr().out
    assert sum(l.startswith("episode ") for l in out.splitlines()) == 3
    mappo.main(["--eval-from", str(path), "--num-eval-episodes", "3", "--seed", "5"])
    evaluated = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("seed_0_best.msgpack"))
    assert line in evaluated.splitlines(), (line, evaluated)
    # the GIF replays the evaluation's episodes: their returns agree (else watch prints a note)
    assert "note:" not in out, out
    assert f"gif: {gif} (episodes 1-2, 3 frames" in out
    assert Image.open(gif).n_frames >= 1 and gif.stat().st_size > 0


def test_the_replay_is_the_evaluation_and_keeps_each_episodes_last_state(runs):
    # A --ctce run's guider: the recorded episodes are the first of the script's evaluation,
    # and each ends on the state after its last step (which env.step replaces by the next
    # episode's first): CoordSum's episodes are 100 steps.
    run = watch.load_run(runs["sable"][0])
    policy, params = watch.load_policy(run, 0, "best")
    key = jax.random.PRNGKey(1)
    evaluate = watch.make_evaluate(run, greedy=False).lower(params, key, 3).compile(FAST_COMPILE)
    play = watch.make_play(run, policy, 3, 2).lower(params, key).compile(FAST_COMPILE)
    returns, _ = evaluate(params, key)
    episodes = watch.split_episodes(*play(params, key))
    np.testing.assert_array_equal([ep.episode_return for ep in episodes], returns[:2])
    assert [len(ep.states) for ep in episodes] == [101, 101] and len(episodes[0].actions) == 100
    assert int(episodes[0].states[0].step_count) == 0 and int(episodes[0].states[-1].step_count) == 100
    np.testing.assert_allclose(episodes[1].episode_return, episodes[1].rewards.sum())


@pytest.mark.parametrize("env_id", ["rware-tiny-2ag", "lbf-8x8-2p-2f-coop", "connector-5x5x3a", "smax-3s_vs_5z",
                                    "mpe-simple_spread_3ag"])
def test_every_family_renders_a_gif_on_the_cpu(env_id, tmp_path):
    # (CoordSum's picture is drawn in the test above.) A random actor, 3 steps, 4 frames.
    env = envs.make(env_id)
    run = watch.Run(tmp_path, mappo, dataclasses.replace(RUNS["mappo"][1], env_id=env_id), env, joint=False)
    policy = watch.make_policy(run, greedy=False)
    params = random_params(policy.init, 0)
    play = watch.make_play(run, policy, 1, 1, num_steps=3)
    play = play.lower(params, jax.random.PRNGKey(0)).compile(FAST_COMPILE)
    episodes = watch.split_episodes(*play(params, jax.random.PRNGKey(0)))
    assert len(episodes[0].states) == 4 and episodes[0].actions.shape[0] == 3
    gif = tmp_path / "out.gif"
    assert watch.render_gif(env, episodes, gif, fps=5, scale=0.5, max_frames=4) == 4
    image = Image.open(gif)
    assert gif.stat().st_size > 1000 and image.size[0] >= 150
    # Pillow merges identical consecutive frames (an untrained policy may stand still)
    assert 1 <= image.n_frames <= 4


# --------------------------------------------------------------------------------------------------
# Bad run folders and flags
# --------------------------------------------------------------------------------------------------
def test_cli_error_is_one_line_and_exit_2(runs, tmp_path):
    # through the real command line: the saved models of a run whose config says another task
    other = tmp_path / "other_task"
    shutil.copytree(runs["mappo"][0], other)
    config = json.loads((other / "config.json").read_text())
    config["args"]["env_id"] = "coordsum-5x20"
    (other / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, str(ROOT / "watch.py"), str(other)], capture_output=True, text=True,
                          timeout=300)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ") and "does not fit mappo's actor for coordsum-5x20" in lines[0], lines[0]
    assert "ActionHead_0/Dense_0/bias has shape (10,), expected (20,)" in lines[0]


def make_bad(tmp_path, runs, kind):
    path = tmp_path / kind
    if kind == "missing":
        return path
    if kind == "no_config":
        path.mkdir()
        return path
    shutil.copytree(runs["mappo"][0], path)
    config = json.loads((path / "config.json").read_text())
    if kind == "no_models":
        shutil.rmtree(path / "models")
    elif kind == "other_script":
        config["algo"] = "train_dqn"
    elif kind == "guider_for_actor":  # a --ctce run's guider where the config says the actor
        shutil.rmtree(path / "models")
        shutil.copytree(runs["sable"][0] / "models", path / "models")
    elif kind == "not_msgpack":
        (path / "models" / "seed_0_best.msgpack").write_bytes(b"not a model")
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("kind, flags, message", [
    ("missing", [], "no such run folder"),
    ("no_config", [], "no config.json"),
    ("no_models", [], "has no saved policies (models/): train with --save-model"),
    ("other_script", [], "trained by train_dqn.py, which watch.py does not know"),
    ("guider_for_actor", [], "does not fit mappo's actor for coordsum-3x10"),
    ("not_msgpack", [], "is not a saved policy"),
    ("ok", ["--seed-index", "2"], "has no seed_2_best.msgpack (--seed-index 2; saved seeds: 0, 1)"),
    ("ok", ["--gif-episodes", "5", "--episodes", "4"], "--gif-episodes must lie in 0..--episodes (4)"),
    ("ok", ["--which", "last"], "--which"),
    ("ok", ["--fps", "0"], "--fps must be positive"),
])
def test_bad_run_folders_and_flags_are_watch_errors(kind, flags, message, runs, tmp_path):
    path = runs["mappo"][0] if kind == "ok" else make_bad(tmp_path, runs, kind)
    with pytest.raises(watch.WatchError) as error:
        watch.main([str(path), *flags])
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
