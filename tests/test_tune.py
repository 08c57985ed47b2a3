"""Candidates trained side by side in one compiled call (runs.candidates_train) and the tuning driver
(benchmarks/tune.py): its study, its results on disk, and its resumption after a kill."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import magpo_sable as ms
import mappo
import runs
from helpers import cli_env, fast_jit

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--env-id", "coordsum-3x10", "--num-seeds", "1", "--num-envs", "4", "--rollout-length", "16",
        "--total-timesteps", "256", "--num-evals", "2", "--num-eval-episodes", "4", "--ppo-epochs", "2"]


@pytest.mark.parametrize("module, settings", [
    (mappo, [{"lr": 1e-3, "clip_eps": 0.1, "gamma": 0.9}, {"lr": 3e-4, "ent_coef": 0.1, "max_grad_norm": 5.0}]),
    (ms, [{"delta": 1.1, "lam": 0.0, "decay_scaling_factor": 0.5}, {"delta": 3.0, "lam": 8.0, "vf_coef": 0.1}]),
], ids=["mappo", "magpo_sable"])
def test_candidates_trained_together_equal_each_trained_alone(module, settings):
    """Two settings of the shape-free flags in one compiled call (the tuner's lanes) give what each gives as
    a run of its own (flags as constants), up to float rounding, as seeds in a batch do; the two differ."""
    base = module.parse_args(TINY)
    env = envs.make(base.env_id)
    names = runs.per_candidate_flags(base)
    assert {"lr", "clip_eps", "gamma", "max_grad_norm"} <= set(names)
    assert ({"delta", "lam", "decay_scaling_factor"} <= set(names)) == (module is ms)
    candidates = [dataclasses.replace(base, **s) for s in settings]
    values = jnp.asarray([[float(getattr(a, n)) for n in names] for a in candidates], jnp.float32)
    train = runs.candidates_train(module.make_train, base, env, None, names)
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    keys = jnp.stack([key, key])

    together = fast_jit(lambda k, v: runs.train_candidates(train, k, v, jnp.zeros(2, jnp.int32)))(keys, values)["history"]
    metrics = ("eval/episode_return", "loss/value", "loss/entropy", "loss/approx_kl")
    # (magpo_sable: the second candidate alone, each Sable compilation being the test's cost)
    for i, args in list(enumerate(candidates))[module is ms:]:
        alone = fast_jit(lambda k, a=args: module.make_train(a, env, None)(k, 0))(key)["history"]
        for name in metrics:
            np.testing.assert_allclose(together[name][i], alone[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert not np.allclose(together["loss/value"][0], together["loss/value"][1])


def tune(tmp_path, *flags, kill_at=None):
    env = cli_env()
    if kill_at:
        env["TUNE_KILL_AT"] = kill_at
    command = [sys.executable, str(ROOT / "benchmarks" / "tune.py"), "--method", "mappo", "--env-id", "coordsum-3x10",
               "--n-trials", "4", "--batch", "2", "--space", "lr=1e-3,3e-4 clip_eps=0.1,0.2",
               "--extra", " ".join(TINY[4:]), "--out-dir", str(tmp_path / "tune"), *flags]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)


def test_tuning_stores_its_study_and_resumes_after_a_kill_without_repeating_finished_trials(tmp_path):
    """Killed after the second batch's trials were asked: the rerun keeps the first batch's two trials, asks the
    two killed ones again with their settings, and ends with 4 finished trials and the best one's command line.
    Every finished trial is on disk once, its metrics.jsonl rows tagged with it."""
    import optuna

    killed = tune(tmp_path, kill_at="asked:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    storage = f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    study = optuna.load_study(study_name="coordsum-3x10__mappo", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"], states
    first = {t.number: (t.params, t.value) for t in study.trials[:2]}
    killed_params = [study.trials[2].params, study.trials[3].params]

    resumed = tune(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "2 of 4 trials finished, 2 killed ones asked again" in resumed.stdout
    # one call for the killed batch, unless its settings were all trained before (then told their values)
    new_settings = [p for p in killed_params if p not in [params for params, _ in first.values()]]
    assert sum(l.startswith("call ") for l in resumed.stdout.splitlines()) == (1 if new_settings else 0)
    study = optuna.load_study(study_name="coordsum-3x10__mappo", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and [t.state.name for t in study.trials[2:4]] == ["FAIL", "FAIL"]
    assert {t.number: (t.params, t.value) for t in complete[:2]} == first  # not trained again
    assert [t.params for t in complete[2:]] == killed_params
    assert [t.user_attrs["requeued_from"] for t in complete[2:]] == [2, 3]
    best = max(complete, key=lambda t: t.value)
    assert f"--lr {best.params['lr']} --clip-eps {best.params['clip_eps']}" in resumed.stdout.splitlines()[-1]

    lines = [json.loads(l) for l in (tmp_path / "tune" / "trials.jsonl").read_text().splitlines()]
    assert sorted(r["trial"] for r in lines) == sorted(t.number for t in complete)
    for t in complete:
        trained = t.user_attrs.get("same_as", t.number)  # a repeated setting is told the first one's value
        assert trained == t.number or study.trials[trained].params == t.params
        call = tmp_path / "tune" / "calls" / t.user_attrs["call"]
        rows = [json.loads(l) for l in (call / "metrics.jsonl").read_text().splitlines()]
        mine = [r for r in rows if r["trial"] == trained]
        assert [r["checkpoint"] for r in mine] == [0, 1] and all(r["params"] == t.params for r in mine)
        assert t.value == pytest.approx(np.mean([r["eval/episode_return"] for r in mine]))
    changed = tune(tmp_path, "--objective", "absolute")  # a study continues only with its own settings
    assert changed.returncode == 2 and "was run with other settings" in changed.stderr.splitlines()[-1]


def test_tune_refuses_bad_options_in_one_line(tmp_path):
    proc = tune(tmp_path, "--space", "not_a_flag=1,2")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --space: 'not_a_flag=1,2'")
