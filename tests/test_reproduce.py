"""benchmarks/reproduce.py and benchmarks/plot.py on synthetic run folders written by the scripts' own
Reporter: the plots and the table (the paper's value beside ours, the one cell below the paper
marked), and the driver's commands (preset where the paper has a row, run names, finished and killed
runs). Nothing trains."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

import ctds
import envs
import magpo_sable
import mappo
from benchmarks import plot, reproduce
from helpers import system_name, write_config
from runs import Reporter

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["coordsum-3x10", "connector-5x5x3a"]  # a task scored by its return, and one by its win rate
MODULES = {"magpo": magpo_sable, "ctds": ctds, "mappo": mappo}
SHORT = dict(num_seeds=3, num_envs=16, rollout_length=64, total_timesteps=4 * 2 * 16 * 64, num_evals=4)
LOW = ("coordsum-3x10", "mappo")  # the one result made to fall short of the paper
SCRIPTS = {"magpo": "magpo_sable.py", "sable": "magpo_sable.py", "mat": "magpo_mat.py", "magpo_mat": "magpo_mat.py",
           "ctds": "ctds.py", "mappo": "mappo.py", "ippo": "ippo.py"}


def write_run(folder: Path, module, args, absolute: np.ndarray, finished: bool = True) -> None:
    """A run folder as the script's main() leaves it: its config.json, then its Reporter fed one
    checkpoint per evaluation (the metric climbs to `absolute`, the return stays 0.5 below it, so a
    table that read the return for a win-rate task would show it) and the absolute metric."""
    env = envs.make(args.env_id)
    folder.mkdir(parents=True)
    write_config(folder, module, args, env)
    reporter = Reporter(args, env, folder, system=system_name(module, args))
    rng = np.random.default_rng(0)
    for k in range(args.num_evals):
        for s in range(args.num_seeds):
            metric = absolute[s] * (k + 1) / args.num_evals + 0.01 * rng.normal(size=args.num_eval_episodes)
            reporter(s, k, {"eval/episode_return": metric - 0.5, "eval/episode_metric": metric, "loss/actor": 0.0})
    if finished:
        episodes = np.repeat(absolute[:, None], 10 * args.num_eval_episodes, axis=1)
        reporter.finish({"absolute/episode_return": episodes - 0.5, "absolute/episode_metric": episodes})


def paper_value(env_id, method):
    with open(ROOT / "benchmarks" / "paper_table1.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["env_id"] == env_id and r["method"] == method)
    return float(row["mean"]), float(row["std"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2 tasks x 3 methods x 3 seeds: each at the paper's mean (seeds spread within its std), except
    LOW, two paper stds below it; plus a killed run and a shorter duplicate, both to be left out."""
    base = tmp_path_factory.mktemp("runs")
    for env_id in TASKS:
        for method, module in MODULES.items():
            mean, std = paper_value(env_id, method)
            if (env_id, method) == LOW:
                mean -= 2 * std
            args = module.Args(env_id=env_id, **SHORT)
            write_run(base / f"{env_id}__{method}", module, args, mean + 0.5 * std * np.array([-1.0, 0.0, 1.0]))
    short = mappo.Args(env_id="coordsum-3x10", **{**SHORT, "total_timesteps": SHORT["total_timesteps"] // 2})
    write_run(base / "short-mappo", mappo, short, np.full(3, 1.0))
    write_run(base / "killed-mappo", mappo, mappo.Args(env_id="connector-5x5x3a", **SHORT), np.zeros(3), finished=False)
    return base


def table_rows(text):
    """The markdown results table (the first table of the file) -> (header cells, {task: row cells})."""
    lines = [l for l in text.split("Open questions")[0].splitlines() if l.startswith("|") and not l.startswith("|---")]
    split = lambda l: [c.strip() for c in l.strip("|").split("|")]
    return split(lines[0]), {split(l)[0]: split(l) for l in lines[1:]}


def test_plot_draws_every_figure_and_marks_only_the_result_below_the_paper(runs, tmp_path, capsys):
    out = runs / "plots"  # the default: nothing under docs/ is touched unless --docs
    plot.main(["--runs", str(runs), "--reps", "200"])
    log = capsys.readouterr().out
    for name in [*(f"curve_{t}.png" for t in TASKS), "aggregate_coordsum.png", "aggregate_connector.png"]:
        assert (out / name).stat().st_size > 10_000, name
    assert "ignored" in log and "killed-mappo" in log
    assert "kept coordsum-3x10__mappo" in log and "more steps" in log

    text = (out / "results.md").read_text()
    header, rows = table_rows(text)
    assert set(rows) == set(TASKS)
    assert header[:2] == ["task", "metric"] and rows["connector-5x5x3a"][1] == "win_rate"
    marked = [(task, header[i]) for task, row in rows.items() for i, cell in enumerate(row) if plot.OPEN in cell]
    assert marked == [("coordsum-3x10", "MAPPO ours")]
    # ours (the absolute metric's mean over seeds) beside the paper's value, with the budget
    mean, std = paper_value("connector-5x5x3a", "magpo")
    row = rows["connector-5x5x3a"]
    assert row[header.index("MAGPO ours")].startswith(f"{mean:.2f} ± ")
    assert row[header.index("MAGPO paper")] == "0.94 ± 0.01"
    assert row[-1] == f"{plot.fmt_steps(SHORT['total_timesteps'])} × 3"
    assert "Open questions" in text and "P(MAGPO > method)" in text


def test_iqm_per_checkpoint_is_rliables_iqm_at_each_checkpoint():
    scores = np.random.default_rng(0).normal(size=(5, 3, 7))
    np.testing.assert_allclose(plot.iqm_per_checkpoint(scores),
                               [plot.metrics.aggregate_iqm(scores[..., k]) for k in range(7)])


def test_paper_table_has_every_task_and_method_of_table_1():
    with open(ROOT / "benchmarks" / "paper_table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 43 * 5 and {r["method"] for r in rows} == {"magpo", "ctds", "ippo", "mappo", "mat"}
    assert {r["env_id"] for r in rows} <= set(envs.ENV_IDS)
    assert all(r["env_family"] == r["env_id"].split("-")[0] for r in rows)


def dry_run(out_dir, methods, extra="--num-envs 16 --rollout-length 64 --recurrent-chunk-size 64"):
    """The driver's exit code for SHORT's budget on a task with paper rows for every method and one
    with MAGPO's only."""
    return reproduce.main(["--env-ids", "coordsum-3x10", "rware-tiny-4ag", "--methods", *methods,
                           "--num-seeds", "3", "--total-timesteps", str(SHORT["total_timesteps"]),
                           "--num-evals", "4", "--extra", extra, "--out-dir", str(out_dir), "--dry-run"])


def test_driver_commands_preset_names_and_existing_runs(tmp_path, capsys):
    tag = reproduce.budget_tag(SHORT["total_timesteps"])
    flags = ["--env-id", "coordsum-3x10", "--num-seeds", "3", "--total-timesteps", str(SHORT["total_timesteps"]),
             "--num-evals", "4", "--num-envs", "16", "--rollout-length", "64", "--recurrent-chunk-size", "64"]
    finished = mappo.parse_args(flags + ["--preset", "paper"])  # what the driver's command would train
    write_run(tmp_path / f"coordsum-3x10__mappo__{tag}", mappo, finished, np.ones(3))
    (tmp_path / f"rware-tiny-4ag__magpo_mat__{tag}").mkdir()  # killed before its first checkpoint
    killed = tmp_path / f"rware-tiny-4ag__magpo__{tag}"  # killed after a checkpoint: its state is there
    killed.mkdir()
    killed_args = magpo_sable.parse_args(["--env-id", "rware-tiny-4ag", *flags[2:], "--preset", "paper"])
    write_config(killed, magpo_sable, killed_args, envs.make("rware-tiny-4ag"))
    (killed / "state.msgpack").write_bytes(b"")

    assert dry_run(tmp_path, list(SCRIPTS)) == 1  # the run killed before its first checkpoint is refused
    log = capsys.readouterr().out
    commands = {m[0]: m[1] for m in re.findall(r"\] (\S+): (python .*)", log)}
    assert set(commands) == {f"{t}__{m}__{tag}" for t in ["coordsum-3x10", "rware-tiny-4ag"] for m in SCRIPTS} - \
        {f"coordsum-3x10__mappo__{tag}", f"rware-tiny-4ag__magpo_mat__{tag}"}
    assert commands.pop(killed.name) == f"python magpo_sable.py --resume {killed}"
    assert f"{killed.name}: killed before the end: resuming it from its last checkpoint" in log
    for name, command in commands.items():
        env_id, method, _ = name.split("__")
        assert command.startswith(f"python {SCRIPTS[method]} --env-id {env_id} ")
        assert (" --ctce " in command) == (method in ("sable", "mat"))
        assert f"--run-name {name}" in command and "--num-envs 16" in command and f"--out-dir {tmp_path}" in command
        # paper_params.csv has CoordSum rows for every method (CTDS takes MAGPO's, MAGPO-MAT MAT's), and
        # rows for MAGPO only elsewhere
        assert ("--preset paper" in command) == (env_id == "coordsum-3x10" or method in ("magpo", "ctds"))
    assert f"coordsum-3x10__mappo__{tag}: finished already" in log
    assert "the paper lists no mappo configuration for rware-tiny-4ag" in log
    assert re.search(rf"rware-tiny-4ag__magpo_mat__{tag}: ERROR: .* exists without absolute_metric.json or a saved state",
                     log)

    # the same folder name with other settings is not reused
    assert dry_run(tmp_path, ["mappo"], extra="--num-envs 16 --rollout-length 64 --recurrent-chunk-size 64 --lr 1e-3") == 1
    assert f"coordsum-3x10__mappo__{tag} holds a finished run with other settings (lr)" in capsys.readouterr().out


def test_driver_rejects_its_own_flags_in_extra(capsys):
    with pytest.raises(SystemExit) as exit:
        reproduce.main(["--env-ids", "coordsum-3x10", "--methods", "mappo", "--extra", "--run-name x", "--dry-run"])
    assert exit.value.code == 2 and "--run-name" in capsys.readouterr().err


def test_marl_eval_export_is_what_marl_evals_loader_reads(runs, tmp_path):
    """plot.py --marl-eval merges the runs the figures use into one file in marl-eval's layout: its merge
    (`concatenate_files`) splits each run key as seed_<int>; `data_process_pipeline` and
    `create_matrices_for_rliable` take the run keys of a task's first algorithm for every algorithm and
    the last key of a run as its absolute metrics. Killed and shorter duplicate runs are left out."""
    out = tmp_path / "merged.json"
    plot.main(["--runs", str(runs), "--marl-eval", str(out)])
    merged = json.loads(out.read_text())
    assert set(merged) == {"coordsum", "connector"}
    for tasks in merged.values():
        for task, methods in tasks.items():
            assert set(methods) == set(MODULES)
            metric = envs.make(task).metric_name
            first = list(methods["magpo"])
            for seeds in methods.values():
                assert list(seeds) == first == ["seed_0", "seed_1", "seed_2"]
                for steps in seeds.values():
                    assert list(steps) == [*(f"step_{k}" for k in range(SHORT["num_evals"])), "absolute_metrics"]
                    for k in range(SHORT["num_evals"]):
                        entry = steps[f"step_{k}"]
                        assert isinstance(entry["step_count"], int) and len(entry[metric]) == 32
                    assert len(steps["absolute_metrics"][metric]) == 320


def test_seed_keys_are_unique_across_seeds_and_diverged_seeds_are_left_out(tmp_path):
    """marl_eval.json's keys are seed_<--seed x 10,000 + index>, so the runs of --seed 0 and --seed 1 merge
    without one overwriting the other; a seed that diverged is not exported (nor plotted)."""
    folder = tmp_path / "runs"
    folder.mkdir()
    for base_seed in (0, 1):
        args = mappo.Args(env_id="coordsum-3x10", seed=base_seed, **{**SHORT, "num_seeds": 2})
        env, run = envs.make(args.env_id), folder / f"seed{base_seed}"
        run.mkdir()
        write_config(run, mappo, args, env)
        reporter = Reporter(args, env, run, system="mappo")
        for k in range(args.num_evals):
            for s in range(2):
                loss = np.nan if (base_seed, s, k) == (1, 1, 2) else 0.0
                reporter(s, k, {"eval/episode_return": np.full(32, 1.0 + k), "eval/episode_metric": np.full(32, 1.0 + k),
                                "loss/actor": np.float32(loss)})
        reporter.finish({"absolute/episode_return": np.ones((2, 320)), "absolute/episode_metric": np.ones((2, 320))})
        keys = json.loads((run / "marl_eval.json").read_text())["coordsum"]["coordsum-3x10"]["mappo"]
        assert list(keys) == [f"seed_{10_000 * base_seed}", f"seed_{10_000 * base_seed + 1}"]
    one_run = lambda name: plot.marl_eval_export({("coordsum-3x10", "mappo"): plot.load_run(folder / name)})
    assert list(one_run("seed1")["coordsum"]["coordsum-3x10"]["mappo"]) == ["seed_10000"]
    assert plot.load_run(folder / "seed1").returns.shape == (1, SHORT["num_evals"])
    assert list(one_run("seed0")["coordsum"]["coordsum-3x10"]["mappo"]) == ["seed_0", "seed_1"]
