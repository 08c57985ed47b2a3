"""runs.py: the run plumbing is one text, used by all five scripts (none keeps its own copy)."""

import dataclasses
import inspect
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctds
import envs
import ippo
import magpo_mat
import magpo_sable
import mappo
import runs
from helpers import cli_env, fast_jit

SCRIPTS = [ippo, mappo, magpo_sable, magpo_mat, ctds]
PLUMBING = ["Reporter", "fmt_time", "make_run_dir", "save_models", "shard_seeds", "start_run", "compile_and_run",
            "finish_run", "cli"]


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__)
def test_each_script_uses_runs_plumbing(module):
    source = inspect.getsource(module)
    assert module.runs is runs and getattr(module, "ArgError", runs.ArgError) is runs.ArgError  # one error class
    for name in PLUMBING:  # not defined again in the script
        assert f"def {name}(" not in source and f"class {name}" not in source, name
    main = inspect.getsource(module.main)
    for call in ["runs.start_run(", "runs.Reporter(", "runs.compile_and_run(", "runs.finish_run("]:
        assert call in main, call
    assert "runs.evaluate_saved(args, Args, ALGO, load_policy)" in inspect.getsource(module.evaluate_saved)
    assert "runs.parse_args(Args, apply_preset, __doc__, argv)" in inspect.getsource(module.parse_args)
    assert "runs.check_run_args(args" in inspect.getsource(module.check_args)
    assert "runs.paper_row(args, " in inspect.getsource(module.apply_preset)
    assert "runs.preset_values(args, " in inspect.getsource(module.apply_preset)  # runs.PRESET_COLUMNS, one mapping
    assert "columns" not in inspect.getsource(module.apply_preset)
    assert source.rstrip().endswith('if __name__ == "__main__":\n    runs.cli(main)')
    guided = hasattr(module, "Guider")
    assert ('columns={"guider/episode_return": "guider"}' in main) == guided


def test_reporter_columns_and_system(tmp_path, capsys):
    """The guided scripts' extra progress column, and the method's name in marl_eval.json."""
    env = envs.make("coordsum-3x10")
    args = mappo.Args(num_seeds=2, num_evals=2, total_timesteps=2 * 128 * 128, num_eval_episodes=3)
    reporter = runs.Reporter(args, env, tmp_path, system="sable", columns={"guider/episode_return": "guider"})
    for s in range(2):
        reporter(s, 0, {"eval/episode_return": np.ones(3), "eval/episode_metric": np.ones(3),
                        "guider/episode_return": np.float32(2.5 + s), "loss/actor": np.float32(0.0)})
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("[   1/2]") and "| guider     3.000 |" in line and "eta" in line
    assert set(json.loads((tmp_path / "marl_eval.json").read_text())["coordsum"]["coordsum-3x10"]) == {"sable"}
    plain = runs.Reporter(args, env, tmp_path / "plain", system="mappo")
    (tmp_path / "plain").mkdir()
    plain(0, 0, {"eval/episode_return": np.ones(3), "eval/episode_metric": np.ones(3), "guider/episode_return": 1.0})
    plain(1, 0, {"eval/episode_return": np.ones(3), "eval/episode_metric": np.ones(3), "guider/episode_return": 1.0})
    assert "guider" not in capsys.readouterr().out


def test_fmt_time_and_arg_error_message():
    assert runs.fmt_time(3725.9) == "1:02:05"
    with pytest.raises(runs.ArgError, match=r"\(see --help\)$"):
        mappo.parse_args(["--no-such-flag"])


def test_watch_knows_the_five_scripts_and_not_runs():
    import watch

    assert watch.known_algos() == sorted(["ippo", "mappo", "magpo_sable", "magpo_mat", "ctds"])


def test_reporter_marks_a_diverged_seed_and_the_others_go_on(tmp_path, capsys):
    """Seed 1's loss turns nan at the 2nd checkpoint: stderr names the seed and the metric there, its rows
    from then on say diverged with no numbers (metrics.jsonl, marl_eval.json), the progress line is seed 0's,
    absolute_metric.json names it, and finish_run ends with Diverged (exit code 1 through runs.cli)."""
    env = envs.make("coordsum-3x10")
    args = mappo.Args(num_seeds=2, num_evals=3, total_timesteps=3 * 128 * 128, num_eval_episodes=2)
    reporter = runs.Reporter(args, env, tmp_path, system="mappo")
    for checkpoint in range(3):
        for s in range(2):
            loss = np.float32(np.nan if s == 1 and checkpoint >= 1 else 0.5)
            returns = np.full(2, 10.0 + s)  # CoordSum's metric is its return
            reporter(s, checkpoint, {"eval/episode_return": returns, "eval/episode_metric": returns,
                                     "loss/value": loss, "params/max_abs": np.float32(3.0)})
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith("seed 1 diverged at checkpoint 2 (") and "loss/value" in err
    lines = out.splitlines()
    assert "eval return    10.000 ±   0.000" in lines[-1] and "diverged 1/2" in lines[-1]
    assert "diverged" not in lines[0]
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    marked = [r for r in rows if r.get("diverged")]
    assert [(r["checkpoint"], r["seed_index"]) for r in marked] == [(1, 1), (2, 1)]
    assert all("eval/episode_return" not in r and "loss/value" not in r for r in marked)
    assert all(np.isfinite(r["loss/value"]) for r in rows if not r.get("diverged"))
    seed_1 = json.loads((tmp_path / "marl_eval.json").read_text())["coordsum"]["coordsum-3x10"]["mappo"]["seed_1"]
    assert seed_1["step_0"]["episode_return"] == [11.0, 11.0]
    assert seed_1["step_1"] == {"step_count": reporter.steps_at(1), "diverged": True}
    results = {"absolute/episode_return": np.ones((2, 20)), "absolute/episode_metric": np.ones((2, 20))}
    with pytest.raises(runs.Diverged, match=r"^1 of 2 seeds diverged: seed 1 at checkpoint 2 \(loss/value\)"):
        runs.finish_run(args, tmp_path, results, reporter, None, "mappo")
    summary = json.loads((tmp_path / "absolute_metric.json").read_text())
    assert summary["diverged"] == {"1": {"checkpoint": 1, "metrics": ["loss/value"]}}


def test_max_abs_is_not_finite_exactly_when_a_parameter_is_not():
    import jax.numpy as jnp

    params = {"a": jnp.array([1.0, -4.0]), "b": {"c": jnp.zeros((2, 2))}}
    assert float(runs.max_abs(params)) == 4.0
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not np.isfinite(runs.max_abs({**params, "b": {"c": jnp.zeros((2, 2)).at[1, 0].set(bad)}}))


def test_track_gives_each_seed_its_own_wandb_run_grouped_by_the_run(tmp_path, monkeypatch, capsys):
    """--track: one wandb run per seed (named <run>__seed_<i>, group=<run>), each logging its own evaluation
    return and task metric, its training episodes' return apart (train/episode_return), and its own absolute
    metric; all finished at the end."""
    import sys
    import types

    class FakeRun:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary, self.finished = kwargs, [], {}, False

        def log(self, data, step):
            self.logged.append((step, data))

        def finish(self):
            self.finished = True

    made = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: made.append(FakeRun(**kwargs)) or made[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    env = envs.make("connector-5x5x3a")  # a task whose metric (the win rate) is not its return
    args = mappo.Args(env_id=env.env_id, num_seeds=2, num_evals=2, total_timesteps=2 * 128 * 128, num_eval_episodes=2,
                      track=True, out_dir=str(tmp_path), run_name="r")
    run_dir, wandb_runs = runs.start_run(args, env, "mappo", "mappo")
    assert wandb_runs == made and [r.init["name"] for r in made] == ["r__seed_0", "r__seed_1"]
    assert {r.init["group"] for r in made} == {"r"} and [r.init["config"]["seed_index"] for r in made] == [0, 1]
    reporter = runs.Reporter(args, env, run_dir, wandb_runs, system="mappo")
    for checkpoint in range(2):
        for s in range(2):
            reporter(s, checkpoint, {"eval/episode_return": np.full(2, 1.0 + s), "eval/episode_metric": np.full(2, 0.5 * s),
                                     "episode_return": np.float32(3.0 + s), "loss/value": np.float32(0.1)})
    results = {"absolute/episode_return": np.array([[1.0] * 20, [2.0] * 20]),
               "absolute/episode_metric": np.array([[0.0] * 20, [0.5] * 20])}
    runs.finish_run(args, run_dir, results, reporter, wandb_runs, "mappo")
    for s, run in enumerate(made):
        assert [step for step, _ in run.logged] == [reporter.steps_at(0), reporter.steps_at(1)]
        step, data = run.logged[-1]
        logged = (data["eval/episode_return"], data["eval/win_rate"], data["train/episode_return"])
        assert logged == (1.0 + s, 0.5 * s, 3.0 + s)
        assert "episode_return" not in data and data["loss/value"] == pytest.approx(0.1)
        assert run.summary == {"absolute/episode_return": 1.0 + s, "absolute/win_rate": 0.5 * s} and run.finished


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__)
def test_help_shows_one_default_per_flag_and_the_presets_choices(module, capsys):
    """--help: a flag whose default is decided later (None in Args) shows what it is, not None beside a
    docstring saying otherwise; --preset lists its one real value."""
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    text = capsys.readouterr().out
    blocks, flag = {}, None
    for line in text.splitlines():
        stripped = line.strip(" │")
        if stripped.startswith("--"):
            flag = stripped.split()[0].split(",")[0]
        if flag:
            blocks[flag] = blocks.get(flag, "") + " " + " ".join(stripped.split())
    for name in ("--run-name", "--recurrent-chunk-size", *(["--microbatch-size"] if hasattr(module, "Guider") else [])):
        assert "(default: None)" not in blocks[name] and blocks[name].count("(default:") == 1, blocks[name]
    assert "(default: <env-id>__<algo>__<seed>__<time>)" in blocks["--run-name"]
    assert blocks["--preset"].startswith(" --preset {None,paper}")


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__)
def test_help_has_the_shared_flags_then_the_scripts_own(module, capsys):
    """Every Args starts with runs.SHARED_FLAGS in that order; --help shows them as one group and the
    script's own flags as a second group under its name."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(module.Args)]
    assert tuple(fields[:len(runs.SHARED_FLAGS)]) == runs.SHARED_FLAGS
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    own = fields[len(runs.SHARED_FLAGS):]
    assert lines.count("options shared by every script" if own else "options (every script has them)") == 1
    if own:  # mappo.py and ippo.py have no flag of their own
        title = lines.index(f"options of {module.__name__}.py")
        flag_line = lambda name: next(i for i, l in enumerate(lines) if l.split()[:1] in ([name], [name + ","]))
        assert flag_line("--eval-from") < title < flag_line("--" + own[0].replace("_", "-"))
        assert set(lines[title + 1]) == {"-"}  # tyro's rule under the title


def test_a_truncated_or_foreign_saved_policy_is_one_line_error(tmp_path):
    """--eval-from on a models file cut short, or of other shapes than the run's network: runs.ArgError
    (one line, exit code 2) naming the file, instead of msgpack's or a shape error's traceback."""
    import flax.serialization

    template = {"dense": {"kernel": np.zeros((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}
    whole = flax.serialization.to_bytes(template)
    np.testing.assert_array_equal(runs.load_params(_write(tmp_path / "ok.msgpack", whole), template)["dense"]["bias"],
                                  np.zeros(4))
    with pytest.raises(runs.ArgError, match=r"cut.msgpack is not a saved policy \(truncated"):
        runs.load_params(_write(tmp_path / "cut.msgpack", whole[: len(whole) // 2]), template)
    other = flax.serialization.to_bytes({"dense": {"kernel": np.zeros((3, 5), np.float32), "bias": np.zeros(5)}})
    shapes = r"other.msgpack does not fit this run's policy: dense/kernel has shape \(3, 5\), expected \(3, 4\)"
    with pytest.raises(runs.ArgError, match=shapes):
        runs.load_params(_write(tmp_path / "other.msgpack", other), template)


def _write(path, data):
    path.write_bytes(data)
    return path


def test_ctrl_c_stops_the_run_at_a_checkpoint_with_its_results_on_disk(tmp_path):
    """Ctrl-C while the compiled run trains (the main thread waits in XLA, where Python's own handler
    never runs): the run stops at the next checkpoint, everything written until then stays, and the
    exit is one line on stderr, code 130."""
    flags = ["--env-id", "coordsum-3x10", "--num-seeds", "2", "--num-envs", "4", "--rollout-length", "8",
             "--total-timesteps", str(64 * 4 * 8 * 4), "--num-evals", "64", "--num-eval-episodes", "4",
             "--out-dir", str(tmp_path), "--run-name", "r"]
    script = Path(__file__).resolve().parents[1] / "mappo.py"
    proc = subprocess.Popen([sys.executable, str(script), *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env())
    for line in proc.stdout:  # the second progress line: the compiled run is training
        if line.startswith("[   2/"):
            break
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip() and "Submoduled" not in l and "Importing" not in l]
    assert lines[0].startswith("Ctrl-C: stopping after the checkpoint in progress")
    assert lines[-1].startswith("interrupted: stopped by Ctrl-C after checkpoint ") and len(lines) == 2, lines
    assert lines[-1].endswith(f"resume with: python mappo.py --resume {tmp_path / 'r'}")
    written = int(lines[-1].split("after checkpoint ")[1].split()[0])
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= written < 64 and len(rows) == 2 * written  # every checkpoint it reached, both seeds
    assert not (tmp_path / "r" / "absolute_metric.json").exists() and time.time() - t0 < 60


RESUME_FLAGS = ["--env-id", "coordsum-3x10", "--num-seeds", "2", "--num-envs", "4", "--rollout-length", "16",
                "--total-timesteps", "512", "--num-evals", "4", "--num-eval-episodes", "4", "--save-model"]


def _mappo(*flags, env=None):
    script = Path(__file__).resolve().parents[1] / "mappo.py"
    return subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=600,
                          env={**cli_env(), **(env or {})})


def _every_file_parses(folder: Path) -> None:
    import flax.serialization

    for path in folder.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.name.startswith("state.msgpack"):
            assert int(flax.serialization.msgpack_restore(path.read_bytes())["checkpoint"]) >= 0


def _saved_checkpoint(run: Path) -> int:
    import flax.serialization

    return int(flax.serialization.msgpack_restore((run / "state.msgpack").read_bytes())["checkpoint"])


def test_a_run_killed_anywhere_resumes_to_exactly_the_uninterrupted_runs_results(tmp_path):
    """SIGKILL at every point of a run (RUNS_KILL_AT: the fault tests' hook in runs.py): during the
    compilation, after a checkpoint's rows but before its state, after writing the state but before
    renaming it, and after the whole checkpoint; and a row cut short, as a kill inside its write leaves
    it. After each kill every file parses; each --resume compiles once and goes on after the saved
    checkpoint; the run ends with every file byte for byte the uninterrupted run's."""
    full = _mappo(*RESUME_FLAGS, "--out-dir", str(tmp_path), "--run-name", "full")
    assert full.returncode == 0, full.stderr[-2000:]

    script = Path(__file__).resolve().parents[1] / "mappo.py"  # killed while it compiles: nothing to resume
    early = subprocess.Popen([sys.executable, str(script), *RESUME_FLAGS, "--out-dir", str(tmp_path), "--run-name",
                              "early"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    while not (tmp_path / "early" / "config.json").is_file() and early.poll() is None:
        time.sleep(0.05)
    early.kill()
    early.wait()
    _every_file_parses(tmp_path / "early")
    refused = _mappo("--resume", str(tmp_path / "early"))
    assert refused.returncode == 2 and "no state.msgpack" in refused.stderr.strip().splitlines()[-1]

    run = tmp_path / "killed"
    killed = _mappo(*RESUME_FLAGS, "--out-dir", str(tmp_path), "--run-name", "killed", env={"RUNS_KILL_AT": "2:files"})
    assert killed.returncode == -signal.SIGKILL and not (run / "absolute_metric.json").exists()
    _every_file_parses(run)
    rows = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(r)["checkpoint"] for r in rows] == [0, 0, 1, 1] and _saved_checkpoint(run) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write(rows[-1][:40])
    for kill, resumed_after, saved in [("3:state_tmp", 1, 1), ("3:state", 2, 2), (None, 3, None)]:
        resumed = _mappo("--resume", str(run), *(["--save-model"] if kill is None else []),
                         env={"RUNS_KILL_AT": kill} if kill else None)
        assert resumed.stdout.count("compiled in") == 1, resumed.stdout
        assert f"resuming after checkpoint {resumed_after}" in resumed.stdout
        if kill is None:
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            break
        assert resumed.returncode == -signal.SIGKILL and _saved_checkpoint(run) == saved
        assert (run / "state.msgpack.tmp").is_file() == (kill == "3:state_tmp")
        _every_file_parses(run)
    names = ["metrics.jsonl", "marl_eval.json", "absolute_metric.json", "config.json", "models/seed_0_best.msgpack",
             "models/seed_0_final.msgpack", "models/seed_1_best.msgpack", "models/seed_1_final.msgpack"]
    for name in names:
        theirs, ours = (tmp_path / "full" / name).read_bytes(), (run / name).read_bytes()
        if name == "config.json":  # the same flags but for the run's name
            theirs, ours = (json.loads(x)["args"] for x in (theirs, ours))
            theirs["run_name"] = ours["run_name"]
        assert theirs == ours, name
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())  # no state left
    again = _mappo("--resume", str(run))
    assert again.returncode == 2 and again.stderr.strip().endswith("the run is finished (it has its absolute_metric.json)")


def test_resume_keeps_the_runs_flags_and_refuses_what_would_change_it(tmp_path):
    """--resume takes the run's own flags from its config.json; output flags may be given, a flag that
    changes the run and differs is refused naming it, and so are a folder of another script, one with
    no state or a cut state, and --out-dir beside --resume: one line (runs.ArgError) each."""
    run = tmp_path / "r"
    run.mkdir()
    started = mappo.parse_args(RESUME_FLAGS + ["--lr", "0.001"])
    (run / "config.json").write_text(json.dumps({"algo": "mappo", "args": dataclasses.asdict(started)}))
    (run / "metrics.jsonl").write_text("")
    args = mappo.parse_args(["--resume", str(run), "--track", "--lr", "0.001"])
    assert args.track and args.lr == 0.001 and args.num_seeds == 2 and args.resume == str(run)
    assert (args.out_dir, args.run_name) == (str(tmp_path), "r")
    with pytest.raises(runs.ArgError, match=r"--lr 0.1 \(the run's: 0.001\), --num-envs 8 \(the run's: 4\); a resumed"):
        mappo.parse_args(["--resume", str(run), "--lr", "0.1", "--num-envs", "8"])
    with pytest.raises(runs.ArgError, match=r"trained by mappo.py, not ippo.py"):
        ippo.parse_args(["--resume", str(run)])
    with pytest.raises(runs.ArgError, match=r"in its own folder: drop --out-dir"):
        mappo.parse_args(["--resume", str(run), "--out-dir", "x"])
    with pytest.raises(runs.ArgError, match=r"not a run folder"):
        mappo.parse_args(["--resume", str(tmp_path / "nothing")])
    env = envs.make(args.env_id)
    with pytest.raises(runs.ArgError, match=r"no state.msgpack"):
        runs.Reporter(args, env, run, system="mappo")
    (run / "state.msgpack").write_bytes(b"\x83\xaacheckpoint")
    with pytest.raises(runs.ArgError, match=r"state.msgpack: not a run state \(truncated"):
        runs.Reporter(args, env, run, system="mappo")
    other = types.SimpleNamespace(resumed_leaves=[np.zeros((2, 3), np.float32)], run_dir=run)
    fresh = {"w": jnp.zeros((2, 4), np.float32)}
    with pytest.raises(runs.ArgError, match=r"array 0 is float32\[2, 3\], the run's flags build float32\[2, 4\]"):
        runs.restore_runner(other, fresh)


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__)
def test_every_script_resumes_from_its_saved_state_exactly(module):
    """--resume's core in each script: the runner state the checkpoint callback hands out after
    checkpoint 1 (through the host, as state.msgpack stores it), run again from checkpoint 2 by the
    same compiled program, gives the uninterrupted run's later checkpoints, absolute metric and
    policies exactly (the guided scripts with the released code's update epochs, whose agent orders
    and stale memory are part of the state)."""
    tiny = dict(env_id="coordsum-3x10", num_seeds=2, num_envs=4, rollout_length=16, num_minibatches=2, ppo_epochs=2,
                num_evals=3, num_eval_episodes=4, total_timesteps=3 * 4 * 16, recurrent_chunk_size=8, hidden_dim=16)
    fields = {f.name for f in dataclasses.fields(module.Args)}
    released_epochs = {k: True for k in ("shuffle_agents", "stale_epoch_memory") if k in fields}
    args = module.Args(**tiny, **({"embed_dim": 16} if "embed_dim" in fields else {}), **released_epochs)
    saved = {}

    def report(seed_index, checkpoint, metrics, runner):
        if int(checkpoint) == 1:
            saved[int(seed_index)] = jax.tree_util.tree_map(np.asarray, runner)

    train = module.make_train(args, envs.make(args.env_id), report)
    run = fast_jit(jax.vmap(train.run, in_axes=(0, 0, None)))
    keys, seeds = jax.random.split(jax.random.PRNGKey(3)), jnp.arange(2)
    full = jax.device_get(run(jax.vmap(train.init)(keys), seeds, jnp.int32(0)))
    state = jax.tree_util.tree_map(lambda *x: np.stack(x), saved[0], saved[1])
    resumed = jax.device_get(run(state, seeds, jnp.int32(2)))
    for name, value in resumed["history"].items():
        np.testing.assert_array_equal(value[:, 2], full["history"][name][:, 2], err_msg=name)
        assert not value[:, :2].any(), name  # the skipped checkpoints
    for name in ("absolute/episode_return", "actor", "best_actor"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[name], full[name])
