"""Env-steps per second of `envs.make(id)` against the bare environment it wraps.

    python benchmarks/bench_envs.py                 # one task per family, 64 envs x 128 steps
    python benchmarks/bench_envs.py --ids rware-tiny-4ag --repeats 9

Both sides run the same jitted program: `vmap` over the environments of a `lax.scan` over the steps,
with uniformly random legal actions (uniform in the box for MPE). Each repeat continues from the
state the previous one ended in (so long episodes do end and reset, as in training); the first call
(compilation and warm-up) is not timed; the repeats of the three sides are interleaved, and the
table gives the median over the repeats.

"bare" is the environment underneath, stepped as its library steps it:
- jumanji (RWARE, LBF, Connector): `env.step` alone. jumanji's envs do not reset themselves; a
  finished episode just keeps stepping. The extra column "bare+AR" adds jumanji's own
  `AutoResetWrapper`, whose `lax.cond` becomes a select under `vmap` and so resets every step.
- jaxmarl (SMAX, MPE): `env.step`, which auto-resets (computing a reset on every step).
- CoordSum: the adapter's own `_step` without the base class (no ids, no bookkeeping, no reset).
"overhead" = bare SPS / wrapped SPS - 1 (negative: the wrapped env is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envs  # noqa: E402

DEFAULT_IDS = [
    "coordsum-3x10",
    "rware-tiny-4ag",
    "lbf-15x15-3p-5f",
    "connector-5x5x3a",
    "smax-3s5z",
    "mpe-simple_spread_3ag",
]


def legal_random(key, mask):
    return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)


# --------------------------------------------------------------------------------------------------
# One "program" per side: init(key) -> carry for one env; step(carry, key) -> carry
# --------------------------------------------------------------------------------------------------
def wrapped_program(env):
    def init(key):
        return env.reset(key)

    def step(carry, key):
        state, ts = carry
        if env.continuous:
            actions = jax.random.uniform(
                key, (env.num_agents, env.action_dim), minval=env.action_low, maxval=env.action_high
            )
        else:
            actions = legal_random(key, ts.action_mask)
        return env.step(state, actions)

    return init, step


def bare_coordsum(env_id):
    env = envs.make(env_id)

    def init(key):
        return env._reset(key)

    def step(carry, key):
        inner, raw = carry
        act_key, step_key = jax.random.split(key)
        inner, raw, *_ = env._step(step_key, inner, legal_random(act_key, raw.action_mask))
        return inner, raw

    return init, step


def bare_jumanji(env_id, auto_reset=False):
    from jumanji.wrappers import AutoResetWrapper

    wrapped = envs.make(env_id)
    env = AutoResetWrapper(wrapped._env) if auto_reset else wrapped._env

    def init(key):
        return env.reset(key)

    def step(carry, key):
        state, ts = carry
        return env.step(state, legal_random(key, ts.observation.action_mask))

    return init, step


def bare_smax(map_name):
    import jaxmarl
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make(
        "HeuristicEnemySMAX",
        scenario=map_name_to_scenario(map_name),
        see_enemy_actions=True,
        walls_cause_death=True,
        attack_mode="closest",
    )

    def init(key):
        obs, state = env.reset(key)
        return state

    def step(state, key):
        act_key, step_key = jax.random.split(key)
        avail = env.get_avail_actions(state)
        mask = jnp.stack([avail[a] for a in env.agents]).astype(bool)
        actions = legal_random(act_key, mask)
        _, state, *_ = env.step(step_key, state, {a: actions[i] for i, a in enumerate(env.agents)})
        return state

    return init, step


def bare_mpe(num_agents):
    import jaxmarl

    env = jaxmarl.make(
        "MPE_simple_spread_v3",
        num_agents=num_agents,
        num_landmarks=num_agents,
        local_ratio=0.5,
        action_type="Continuous",
    )
    dim = env.action_space(env.agents[0]).shape[0]

    def init(key):
        obs, state = env.reset(key)
        return state

    def step(state, key):
        act_key, step_key = jax.random.split(key)
        actions = jax.random.uniform(act_key, (num_agents, dim))
        _, state, *_ = env.step(step_key, state, {a: actions[i] for i, a in enumerate(env.agents)})
        return state

    return init, step


def bare_program(env_id, auto_reset=False):
    family, _, task = env_id.partition("-")
    if family == "coordsum":
        return None if auto_reset else bare_coordsum(env_id)
    if family in ("rware", "lbf", "connector"):
        return bare_jumanji(env_id, auto_reset)
    if auto_reset:
        return None  # jaxmarl's bare step already auto-resets
    if family == "smax":
        return bare_smax(task)
    if family == "mpe":
        return bare_mpe(int(task.removeprefix("simple_spread_").removesuffix("ag")))
    raise ValueError(env_id)


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
class Runner:
    """A compiled, warmed-up rollout of one program; `time()` runs one more repeat and times it."""

    def __init__(self, program, num_envs, num_steps, seed=0):
        init, step = program
        self.steps = num_envs * num_steps

        @jax.jit
        def start(key):
            return jax.vmap(init)(jax.random.split(key, num_envs))

        @jax.jit
        def run(carry, key):
            def body(carry, step_key):
                return jax.vmap(step)(carry, jax.random.split(step_key, num_envs)), None

            carry, _ = jax.lax.scan(body, carry, jax.random.split(key, num_steps))
            return carry

        self.run, self.key, self.repeat = run, jax.random.PRNGKey(seed), 0
        self.carry = jax.block_until_ready(start(self.key))
        self.time()  # compile and warm up
        self.times = []

    def time(self):
        self.repeat += 1
        t0 = time.perf_counter()
        key = jax.random.fold_in(self.key, self.repeat)
        self.carry = jax.block_until_ready(self.run(self.carry, key))
        elapsed = time.perf_counter() - t0
        if hasattr(self, "times"):
            self.times.append(elapsed)

    def sps(self):
        return self.steps / statistics.median(self.times)


def build(make_program, args):
    try:
        program = make_program()
        return (Runner(program, args.num_envs, args.num_steps) if program else None), None
    except Exception as error:  # e.g. a family not implemented yet
        return None, f"{type(error).__name__}: {error}".splitlines()[0][:100]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ids", nargs="+", default=DEFAULT_IDS)
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    device = jax.devices()[0]
    print(
        f"machine: {os.cpu_count()} CPUs, jax {jax.__version__}, device {device.platform} "
        f"({getattr(device, 'device_kind', '?')}); {args.num_envs} envs x {args.num_steps} steps, "
        f"median of {args.repeats}"
    )
    header = f"{'id':26s} {'bare SPS':>10s} {'bare+AR':>10s} {'wrapped SPS':>12s} {'overhead':>9s}"
    print(header)
    print("-" * len(header))
    for env_id in args.ids:
        bare, bare_err = build(lambda: bare_program(env_id), args)
        bare_ar, _ = build(lambda: bare_program(env_id, auto_reset=True), args)
        wrapped, wrapped_err = build(lambda: wrapped_program(envs.make(env_id)), args)
        runners = [r for r in (bare, bare_ar, wrapped) if r]
        # Interleaved repeats, so that a change in the machine's load hits all sides alike.
        for _ in range(args.repeats):
            for runner in runners:
                runner.time()
        sps = [r.sps() if r else None for r in (bare, bare_ar, wrapped)]
        fmt = lambda x: f"{x:10,.0f}" if x else f"{'-':>10s}"
        overhead = f"{sps[0] / sps[2] - 1:+9.1%}" if sps[0] and sps[2] else f"{'-':>9s}"
        print(f"{env_id:26s} {fmt(sps[0])} {fmt(sps[1])} {fmt(sps[2]):>12s} {overhead}", flush=True)
        for error in (bare_err, wrapped_err):
            if error:
                print(f"    ({error})")


if __name__ == "__main__":
    main()
