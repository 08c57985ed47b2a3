"""runs.py: the run plumbing is one text, used by all five scripts (none keeps its own copy)."""

import inspect
import json

import numpy as np
import pytest

import ctds
import envs
import ippo
import magpo_mat
import magpo_sable
import mappo
import runs

SCRIPTS = [ippo, mappo, magpo_sable, magpo_mat, ctds]
PLUMBING = ["Reporter", "fmt_time", "make_run_dir", "save_models", "shard_seeds", "start_run", "compile_and_run",
            "finish_run", "cli"]


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__)
def test_each_script_uses_runs_plumbing(module):
    source = inspect.getsource(module)
    assert module.runs is runs and module.ArgError is runs.ArgError  # mappo.ArgError still catches check_args'
    for name in PLUMBING:  # not defined again in the script
        assert f"def {name}(" not in source and f"class {name}" not in source, name
    main = inspect.getsource(module.main)
    for call in ["runs.start_run(", "runs.Reporter(", "runs.compile_and_run(", "runs.finish_run("]:
        assert call in main, call
    assert "runs.evaluate_saved(args, Args, ALGO, load_policy)" in inspect.getsource(module.evaluate_saved)
    assert "runs.parse_args(Args, apply_preset, __doc__, argv)" in inspect.getsource(module.parse_args)
    assert "runs.check_run_args(args)" in inspect.getsource(module.check_args)
    assert "runs.paper_row(args, " in inspect.getsource(module.apply_preset)
    assert "runs.preset_values(args, row, columns, explicit)" in inspect.getsource(module.apply_preset)
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
