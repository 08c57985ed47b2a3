"""The released MAGPO with four more numbers in its TRAINER line, to compare with what magpo_sable.py logs.

    python benchmarks/reference/magpo_diagnostics.py \\
        benchmarks/results/reference_check/coordsum-3x10__magpo__1.05Mx5 --seed 0 --out /tmp/magpo_diag

Writes `rec_magpo_diag.py` beside the released `mava/systems/gpo/anakin/rec_magpo.py` in the reference
checkout (benchmarks/reference/setup.sh), runs it with the overrides that the run folder's harness.json
gave that seed (its console in `<out>/seed_<s>/console.log`; `--console` parses a stored one instead of
running), and writes `<out>/diagnostics_seed_<s>.json`: per block of updates, the mean of

- `mask_frac`: the fraction of samples whose |log μ/π| of the taken action exceeds log δ (Eq. 8's mask m;
  ours: `magpo/mask_frac`), and `abs_log_ratio`, the mean |log μ/π| (ours: `magpo/abs_log_ratio`);
- `actor_kl`: the learner's KL(μ‖π) term (ours: `loss/kl`; the released line's `Kl loss` is the guider's
  masked KL, ours `loss/guider_kl`);
- `replay_dev`: max |log π replayed in the update − log π during the rollout| of the learner, over each
  update's whole rollout before its first gradient step (ours: `loss/first_actor_ratio_dev`, as a ratio):
  whether the stored GRU states and resets replay the rollout exactly;

beside the line's own losses and the evaluation and training returns. Only logging is added: the run
trains and evaluates exactly as rec_magpo.py does (with the same seed its returns are the same, to the
printed digit: check against the run folder's `released/seed_<s>/console.log`). The edit is made by
exact string replacement and refused if the released file is not the one it was written for.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compare_reference import ANSI, InputError, check_reference, parse_console, reference_env  # noqa: E402

SCRIPT = Path("mava/systems/gpo/anakin/rec_magpo.py")
DIAG = SCRIPT.with_name("rec_magpo_diag.py")

# (released text, its replacement): each must occur exactly once in rec_magpo.py at d2ac38b
EDITS = [
    ("""            policy_hidden_state, _ = actor_apply_fn(
                params.actor_params,
                last_hstates.policy_hidden_state,
                actor_input,
            )""", """            policy_hidden_state, rollout_actor_pi = actor_apply_fn(
                params.actor_params,
                last_hstates.policy_hidden_state,
                actor_input,
            )"""),
    ("""            return learner_state, (transition, metrics)""",
     """            return learner_state, (transition, metrics, rollout_actor_pi.log_prob(action[jnp.newaxis])[0])"""),
    ("""        learner_state, (traj_batch, episode_metrics) = jax.lax.scan(
            _env_step, learner_state, length=config.system.rollout_length
        )""", """        learner_state, (traj_batch, episode_metrics, rollout_actor_lp) = jax.lax.scan(
            _env_step, learner_state, length=config.system.rollout_length
        )
        _, replay_pi = actor_apply_fn(learner_state.params.actor_params,
                                      traj_batch.hstates.policy_hidden_state[0],
                                      (traj_batch.obs, traj_batch.done))
        replay_dev = jnp.abs(replay_pi.log_prob(traj_batch.action) - rollout_actor_lp).max()"""),
    ("""                    kl_loss = (kl_loss * mask).mean()
""", """                    kl_loss = (kl_loss * mask).mean()
                    mask_frac = mask.mean()
                    abs_log_ratio = jnp.abs(guider_log_prob - actor_log_prob).mean()
"""),
    ("""                    return total_loss, (guider_loss, guider_entropy, value_loss, kl_loss)""",
     """                    return total_loss, (guider_loss, guider_entropy, value_loss, kl_loss,
                                        mask_frac, abs_log_ratio)"""),
    ("""                total_loss1, (guider_loss, entropy, value_loss, kl_loss) = guider_loss_info
                total_loss2, (actor_loss, _) = actor_loss_info""",
     """                total_loss1, (guider_loss, entropy, value_loss, kl_loss,
                              mask_frac, abs_log_ratio) = guider_loss_info
                total_loss2, (actor_loss, actor_kl) = actor_loss_info"""),
    ("""                    "entropy": entropy,
                }""", """                    "entropy": entropy,
                    "mask_frac": mask_frac,
                    "abs_log_ratio": abs_log_ratio,
                    "actor_kl": actor_kl,
                }"""),
    ("""        params, opt_states, traj_batch, advantages, targets, key, _ = update_state
""", """        params, opt_states, traj_batch, advantages, targets, key, _ = update_state
        loss_info["replay_dev"] = jnp.full_like(loss_info["kl_loss"], replay_dev)
"""),
]


def write_diag(magpo: Path) -> Path:
    text = (magpo / SCRIPT).read_text()
    for old, new in EDITS:
        if text.count(old) != 1:
            raise InputError(f"{magpo / SCRIPT} is not the released d2ac38b file (an edit's text occurs "
                             f"{text.count(old)} times)")
        text = text.replace(old, new)
    (magpo / DIAG).write_text(text)
    return magpo / DIAG


def trainer_lines(console: str) -> list[dict]:
    """Every number of each block's TRAINER line, keyed by its label in snake_case."""
    plain = ANSI.sub("", console)
    return [{k.strip().lower().replace(" ", "_"): float(v) for k, v in re.findall(r"([A-Za-z ]+): ([-0-9.e]+)", line)}
            for line in re.findall(r"TRAINER - (.*)", plain)]


def main() -> None:
    try:
        run(parse_args())
    except InputError as error:  # bad input: one line, exit code 2
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a magpo run folder of compare_reference.py (its harness.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, default=Path(".reference"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/magpo_diag"))
    parser.add_argument("--console", type=Path, help="parse this console of an earlier diagnostic run instead of running")
    return parser.parse_args()


def run(a: argparse.Namespace) -> None:
    header_path = a.run_dir / "harness.json"
    if not header_path.is_file():
        raise InputError(f"no harness.json in {a.run_dir}")
    header = json.loads(header_path.read_text())
    if header["method"] != "magpo":
        raise InputError(f"{a.run_dir} is a {header['method']} run, not magpo")
    if a.console:
        write_result(a, header, a.console.read_text())
        return
    reference = a.reference.resolve()
    magpo = reference / "MAGPO"
    check_reference(reference)
    out = a.out.resolve() / f"seed_{a.seed}"
    out.mkdir(parents=True, exist_ok=True)
    diag = write_diag(magpo)
    overrides = [o for o in header["released"]["overrides_seed_0"]
                 if not o.startswith(("system.seed=", "logger.base_exp_path=", "hydra.run.dir="))]
    overrides += [f"system.seed={a.seed}", f"logger.base_exp_path={out / 'results'}", f"hydra.run.dir={out / 'hydra'}"]
    print(f"running {diag.relative_to(magpo)} seed {a.seed} (console -> {out / 'console.log'})", flush=True)
    with open(out / "console.log", "w") as log:
        done = subprocess.run([str(reference / "venv" / "bin" / "python"), str(diag.relative_to(magpo)), *overrides],
                              cwd=magpo, env=reference_env(reference), stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise InputError(f"the diagnostic run failed (exit {done.returncode}); see {out / 'console.log'}")
    write_result(a, header, (out / "console.log").read_text())


def write_result(a, header: dict, console: str) -> None:
    c = header["config"]
    parsed = parse_console(console, c["total_timesteps"] // c["num_evals"])
    plain = ANSI.sub("", console)
    result = {"run_dir": str(a.run_dir), "seed": a.seed, "trainer": trainer_lines(console),
              "episode_return": parsed["episode_return"], "absolute_episode_return": parsed["absolute_episode_return"],
              "train_episode_return": [float(x) for x in re.findall(r"ACTOR - .*?Episode return mean: ([-0-9.]+)", plain)]}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"diagnostics_seed_{a.seed}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
