"""Env-steps per second of `envs.make(id)` against the bare environment it wraps.

    python benchmarks/bench_envs.py                 # one task per family, 64 envs x 128 steps
    python benchmarks/bench_envs.py --ids rware-tiny-4ag --repeats 9

Every side runs the same jitted program: `vmap` over the environments of a `lax.scan` over the
steps, with uniformly random legal actions (uniform in the box for MPE), keeping what the env
returns (its state and its observation) from step to step. Each repeat continues from the state the
previous one ended in (so long episodes do end and reset, as in training); the first call
(compilation and warm-up) is not timed; the repeats of all sides are interleaved, and the table
gives the median over the repeats.

The bare environment underneath, three ways:
- "bare": the library's public step. jumanji (RWARE, LBF, Connector): `env.step`, which does not
  reset (a finished episode just keeps stepping), so it is a bound, not a usable environment.
  jaxmarl (SMAX, MPE): `env.step`, which auto-resets, computing a reset on every step. CoordSum:
  the adapter's own `_step` without the base class (no ids, no bookkeeping, no reset).
- "bare+AR": the library's own auto-reset. jumanji's `AutoResetWrapper` (its `lax.cond` becomes a
  select under `vmap`, so it too resets every step); for jaxmarl the same as "bare".
- "bare+resets": the step without reset, and the library's own reset for exactly the environments
  whose episode ended, on the step it ended (done environments gathered into one batched reset:
  the least a continuously running bare env can do). jumanji: `env.step` then `env.reset`;
  jaxmarl: `env.step_env` then `env.reset`; CoordSum: `_step` then `_reset`.
"overhead" = baseline SPS / wrapped SPS - 1 (negative: the wrapped env is faster), against "bare"
and against "bare+resets": what the wrapper adds on top of stepping and resetting the env (views
with agent ids, the global state, episode bookkeeping, flags and metric).
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
# ("bare+resets": step(carry, key, reset_key) -> carry)
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


def with_resets(step, reset, done):
    """`step` followed by `reset` for exactly the environments whose episode ended."""
    reset_where = envs._make_reset_where(reset)

    def step_and_reset(carry, key, reset_key):
        carry = step(carry, key)
        finished = done(carry)
        return reset_where(finished, finished, reset_key, carry)

    step_and_reset.takes_reset_key = True
    return step_and_reset


def bare_coordsum(env_id, resets=False):
    env = envs.make(env_id)

    def init(key):
        return env._reset(key)

    def step(carry, key):
        inner, raw = carry
        act_key, step_key = jax.random.split(key)
        inner, raw, *_ = env._step(step_key, inner, legal_random(act_key, raw.action_mask))
        return inner, raw

    if resets:
        step = with_resets(step, env._reset, lambda carry: carry[0].step_count >= env.time_limit)
    return init, step


def bare_jumanji(env_id, auto_reset=False, resets=False):
    from jumanji.wrappers import AutoResetWrapper

    wrapped = envs.make(env_id)
    env = AutoResetWrapper(wrapped._env) if auto_reset else wrapped._env

    def init(key):
        return env.reset(key)

    def step(carry, key):
        state, ts = carry
        return env.step(state, legal_random(key, ts.observation.action_mask))

    if resets:
        step = with_resets(step, env.reset, lambda carry: carry[1].last())
    return init, step


def bare_jaxmarl(env, random_actions, resets=False):
    """jaxmarl's `env.step` (which auto-resets), or `step_env` and exact resets."""
    step_fn = env.step_env if resets else env.step

    def init(key):  # the episode's done flag travels with the carry, for `with_resets`
        return (*env.reset(key), jnp.bool_(False))

    def step(carry, key):
        obs, state, _ = carry
        act_key, step_key = jax.random.split(key)
        obs, state, _, dones, _ = step_fn(step_key, state, random_actions(act_key, state))
        return obs, state, dones["__all__"]

    if resets:
        step = with_resets(step, init, lambda carry: carry[2])
    return init, step


def bare_smax(map_name, resets=False):
    import jaxmarl
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make(
        "HeuristicEnemySMAX",
        scenario=map_name_to_scenario(map_name),
        see_enemy_actions=True,
        walls_cause_death=True,
        attack_mode="closest",
    )

    def random_actions(key, state):
        avail = env.get_avail_actions(state)
        mask = jnp.stack([avail[a] for a in env.agents]).astype(bool)
        actions = legal_random(key, mask)
        return {a: actions[i] for i, a in enumerate(env.agents)}

    return bare_jaxmarl(env, random_actions, resets)


def bare_mpe(num_agents, resets=False):
    import jaxmarl

    env = jaxmarl.make(
        "MPE_simple_spread_v3",
        num_agents=num_agents,
        num_landmarks=num_agents,
        local_ratio=0.5,
        action_type="Continuous",
    )
    dim = env.action_space(env.agents[0]).shape[0]

    def random_actions(key, state):
        actions = jax.random.uniform(key, (num_agents, dim))
        return {a: actions[i] for i, a in enumerate(env.agents)}

    return bare_jaxmarl(env, random_actions, resets)


def bare_program(env_id, kind="bare"):
    """kind: "bare", "bare+AR" or "bare+resets" (see the module's docstring)."""
    family, _, task = env_id.partition("-")
    resets = kind == "bare+resets"
    if family == "coordsum":
        return None if kind == "bare+AR" else bare_coordsum(env_id, resets)
    if family in ("rware", "lbf", "connector"):
        return bare_jumanji(env_id, auto_reset=kind == "bare+AR", resets=resets)
    if kind == "bare+AR":
        return None  # jaxmarl's bare step already auto-resets
    if family == "smax":
        return bare_smax(task, resets)
    if family == "mpe":
        return bare_mpe(int(task.removeprefix("simple_spread_").removesuffix("ag")), resets)
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

        # Each env-step gets two keys, drawn outside the program alike for every side: one for the
        # step (actions, and the env where it is random), one that only "bare+resets" uses, so
        # that its resets cost it no extra key split.
        if not getattr(step, "takes_reset_key", False):
            step = lambda carry, key, _, step=step: step(carry, key)

        @jax.jit
        def run(carry, key):
            def body(carry, step_key):
                keys = jax.random.split(step_key, (2, num_envs))
                return jax.vmap(step)(carry, keys[0], keys[1]), None

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
    kinds = ["bare", "bare+AR", "bare+resets", "wrapped"]
    header = (
        f"{'id':24s} {'bare':>9s} {'bare+AR':>9s} {'bare+resets':>12s} {'wrapped':>9s} "
        f"{'vs bare':>8s} {'vs bare+resets':>15s}"
    )
    print(header)
    print("-" * len(header))
    for env_id in args.ids:
        runners, errors = {}, []
        for kind in kinds:
            if kind == "wrapped":
                runners[kind], error = build(lambda: wrapped_program(envs.make(env_id)), args)
            else:
                runners[kind], error = build(lambda: bare_program(env_id, kind), args)
            errors += [error] if error else []
        # Interleaved repeats, so that a change in the machine's load hits all sides alike.
        for _ in range(args.repeats):
            for runner in runners.values():
                if runner:
                    runner.time()
        sps = {kind: runner.sps() if runner else None for kind, runner in runners.items()}
        fmt = lambda x, w: f"{x:{w},.0f}" if x else f"{'-':>{w}s}"
        over = lambda base, w: (
            f"{sps[base] / sps['wrapped'] - 1:+{w}.1%}"
            if sps[base] and sps["wrapped"]
            else f"{'-':>{w}s}"
        )
        print(
            f"{env_id:24s} {fmt(sps['bare'], 9)} {fmt(sps['bare+AR'], 9)} "
            f"{fmt(sps['bare+resets'], 12)} {fmt(sps['wrapped'], 9)} "
            f"{over('bare', 8)} {over('bare+resets', 15)}",
            flush=True,
        )
        for error in errors:
            print(f"    ({error})")


if __name__ == "__main__":
    main()
