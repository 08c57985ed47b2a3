"""Record short SMAX battles from the jaxmarl that the MAGPO paper's runs used, for
tests/test_envs_jaxmarl.py (`test_smax_steps_like_the_papers_jaxmarl`).

The paper's code (liyheng/MAGPO at d2ac38b, on instadeepai/Mava) locks jaxmarl 0.0.6 from a fork,
RuanJohn/JaxMARL at 93c462e (branch `jax-05`), which could not be fetched. The fork's public
`unpin-jax` branch (89639ed, Dec 2024; its SMAX last changed in b302198, June 2024) could: its SMAX
files are those of PyPI's jaxmarl 0.0.7, and differ from 0.1.0's only in an observation space's
declared lower bound, so they are taken to be the paper's SMAX. This script runs that code (not
the jaxmarl installed here) and writes smax_fork_trajectories.npz next to itself.

Run once, with the fork's source unpacked somewhere:

    mkdir -p /tmp/jaxmarl-fork
    git --git-dir=<a clone of RuanJohn/JaxMARL> archive unpin-jax jaxmarl | tar -x -C /tmp/jaxmarl-fork
    python tests/data/record_smax_fork.py /tmp/jaxmarl-fork

or pass the folder of PyPI's jaxmarl 0.0.7 wheel, unzipped (`pip download --no-deps
jaxmarl==0.0.7`): the same SMAX, and the same file. The argument is the folder that holds the
`jaxmarl` package. Nothing is installed: the fork's `jaxmarl/__init__.py` and
`environments/__init__.py`, which import every environment (brax among them, absent here), are
skipped by registering empty packages in their place, so only the SMAX modules and the two base
modules they import (multi_agent_env.py, spaces.py) are loaded from the fork. They run unchanged
under jax 0.7.2.

What is recorded, per map: one battle from a fixed key, stepped with the fork's
HeuristicEnemySMAX.reset / step_env (no auto-reset; the battle stops where jaxmarl says it is
over, or after STEPS steps), with the settings of the paper's mava/configs/env/smax.yaml. The
allies play a simple script (focus fire on the lowest-numbered enemy in range, else wait for the
enemy) with probability SCRIPTED_PROBABILITY and a legal action at random otherwise, so that
enemies die too and the dead-unit rules are exercised. Stored: the keys, the actions, and what our
adapter exposes (the allies' views, the world state, the allies' action masks, their rewards, the
battle's end), all before our agent ids are added.
"""

import os
import sys
import types

import jax
import numpy as np

MAPS = ("2s3z", "3s_vs_5z", "smacv2_5_units")
STEPS = 60
SCRIPTED_PROBABILITY = 0.8


def import_fork_smax(root: str):
    """The `jaxmarl.environments.smax` package under `root`, without jaxmarl's package imports."""
    package = os.path.join(os.path.abspath(root), "jaxmarl")
    assert os.path.isdir(os.path.join(package, "environments", "smax")), f"no jaxmarl SMAX under {root}"
    assert "jaxmarl" not in sys.modules, "import this script's jaxmarl before any other"
    for name, path in (("jaxmarl", package), ("jaxmarl.environments", os.path.join(package, "environments"))):
        module = types.ModuleType(name)
        module.__path__ = [path]
        sys.modules[name] = module
    import jaxmarl.environments.smax as smax

    assert smax.__file__.startswith(package), smax.__file__
    return smax


def pick_actions(rng: np.random.Generator, mask: np.ndarray, first_attack: int) -> np.ndarray:
    """Legal actions: mostly focus fire (the lowest-numbered enemy in range) or, with no enemy in
    range, standing still for the enemies to come; else a legal action at random."""
    actions = []
    for legal in mask:
        attacks = np.flatnonzero(legal[first_attack:]) + first_attack
        if rng.random() < SCRIPTED_PROBABILITY:
            actions.append(attacks[0] if attacks.size else first_attack - 1)  # first_attack - 1: stop
        else:
            actions.append(rng.choice(np.flatnonzero(legal)))
    return np.asarray(actions, np.int32)


def record(smax, map_name: str, seed: int) -> dict:
    env = smax.HeuristicEnemySMAX(
        scenario=smax.map_name_to_scenario(map_name),
        see_enemy_actions=True,
        walls_cause_death=True,
        attack_mode="closest",
    )
    allies = env.agents
    reset, step_env = jax.jit(env.reset), jax.jit(env.step_env)
    avail = jax.jit(env.get_avail_actions)  # the allies' masks, from the wrapper's state

    def views(obs, state):
        masks = avail(state)
        return (
            np.stack([obs[a] for a in allies]),
            np.asarray(obs["world_state"]),
            np.stack([masks[a] for a in allies]).astype(bool),
        )

    rng = np.random.default_rng(seed)
    key, reset_key = jax.random.split(jax.random.PRNGKey(seed))
    obs, state = reset(reset_key)
    obs0, state0, mask0 = views(obs, state)
    mask = mask0
    out = {k: [] for k in ("step_key", "action", "obs", "state", "mask", "reward", "done")}
    for _ in range(STEPS):
        key, step_key = jax.random.split(key)
        actions = pick_actions(rng, mask, env.num_movement_actions)
        obs, state, reward, dones, _ = step_env(
            step_key, state, {a: actions[i] for i, a in enumerate(allies)}
        )
        view, world, mask = views(obs, state)
        for name, value in (
            ("step_key", np.asarray(step_key)), ("action", actions), ("obs", view),
            ("state", world), ("mask", mask), ("reward", np.stack([reward[a] for a in allies])),
            ("done", np.asarray(dones["__all__"])),
        ):
            out[name].append(value)
        if dones["__all__"]:
            break
    record = {name: np.stack(values) for name, values in out.items()}
    record.update(reset_key=np.asarray(reset_key), obs0=obs0, state0=state0, mask0=mask0)
    return {f"{map_name}__{name}": value for name, value in record.items()}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    smax = import_fork_smax(sys.argv[1])
    data = {}
    for seed, map_name in enumerate(MAPS):
        data.update(record(smax, map_name, seed))
        steps = len(data[f"{map_name}__done"])
        allies = data[f"{map_name}__obs0"].shape[0]
        health = data[f"{map_name}__state"][-1][: data[f"{map_name}__state"].shape[-1] // 12 * 10]
        dead = health.reshape(-1, 10)[:, 0] == 0
        print(f"{map_name}: {steps} steps, over: {bool(data[f'{map_name}__done'][-1])}, "
              f"dead allies {dead[:allies].sum()}, dead enemies {dead[allies:].sum()}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smax_fork_trajectories.npz")
    np.savez_compressed(path, **data)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
