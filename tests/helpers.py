"""What several test files share: fast compilation for short programs, a random policy's return,
perturbed parameters, and the check of a one-line CLI error."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp

import envs

# Most test programs run for well under a second after compiling for several: without LLVM's costly
# optimisations they compute the same thing and compile about twice as fast. The learning tests, whose
# runs take longer than their compilation, keep the default.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_XLA_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items())


def fast_jit(f):
    """jax.jit(f), compiled with FAST_COMPILE (once per structure and shapes of the arguments)."""
    jitted, compiled = jax.jit(f), {}

    def call(*args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        signature = (tree, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
        if signature not in compiled:
            compiled[signature] = jitted.lower(*args).compile(FAST_COMPILE)
        return compiled[signature](*args)

    return call


def cli_env(extra_xla_flags=""):
    """The environment for a script run in a subprocess by a test: FAST_COMPILE as XLA flags."""
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), FAST_XLA_FLAGS, extra_xla_flags) if f)
    return {**os.environ, "XLA_FLAGS": flags}


def random_policy_return(env_id, episodes=64):
    """Mean episode return of uniformly random legal actions (the bar learning tests must clear)."""
    env = envs.make(env_id)

    def run(key):
        state, ts = jax.vmap(env.reset)(jax.random.split(key, episodes))

        def body(carry, k):
            state, ts, total = carry
            actions = jax.random.categorical(k, jnp.where(ts.action_mask, 0.0, -jnp.inf))
            state, ts = jax.vmap(env.step)(state, actions)
            return (state, ts, total + ts.episode_return), None

        return jax.lax.scan(body, (state, ts, jnp.zeros(episodes)), jax.random.split(key, env.time_limit))[0][2]

    return float(fast_jit(run)(jax.random.PRNGKey(0)).mean())


def error_lines(proc):
    """stderr of a finished CLI call without jaxmarl's import chatter."""
    return [l for l in proc.stderr.splitlines() if l.strip() and "Submoduled" not in l and "Importing" not in l]


def randomised(params, key, scale=0.3):
    """Every parameter perturbed (Sable zero-initialises its feed-forward layers, which would hide them)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def system_name(module, args) -> str:
    """The method's name in a script's results (the guided scripts' system_name, else its ALGO)."""
    return module.system_name(args) if hasattr(module, "system_name") else module.ALGO


def write_config(folder, module, args, env):
    """The config.json a script's main() writes into its run folder (for tests that fake a run)."""
    system = system_name(module, args)
    config = {"algo": module.ALGO, "system": system, "args": dataclasses.asdict(args), "env": repr(env),
              "num_updates": args.num_updates, "steps_per_seed": args.num_updates * args.steps_per_update}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
