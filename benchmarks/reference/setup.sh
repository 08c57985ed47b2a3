#!/usr/bin/env bash
# Builds the paper's codebase (liyheng/MAGPO, on Mava) in a virtual environment of its own, so that
# benchmarks/bench_reference.py can time it against our scripts on the same machine, the same day.
#
#   bash benchmarks/reference/setup.sh [DIR]        # DIR defaults to .reference (git-ignored)
#   MAGPO_SRC=/path/to/a/clone/or/bare/repo bash benchmarks/reference/setup.sh   # clone from there instead
#
# MAGPO_SRC: what `git clone` clones (default https://github.com/liyheng/MAGPO); any clone holding
# the commit below works, a bare one included. Running this twice is fine: each step is skipped or
# repeated harmlessly.
#
# One method of the released code is patched, for speed only (benchmarks/compare_reference.py runs
# MAGPO and Sable with it): `SimpleRetention._get_decay_matrix_mask_timestep` in
# mava/networks/retention.py builds its (B, T, T) mask with a Python loop over the T time steps,
# which unrolls T updates of a (B, T, T) array into every compiled Sable / MAGPO network call
# (rec_magpo.py on CoordSum, 16 envs x 64 steps, on a shared 2-core CPU: 68 env-steps/s with the loop,
# 129 with the closed form, the same printed losses and returns). The original is kept as `_get_decay_matrix_mask_timestep_loop`;
# the method becomes its closed form: with counts = cumsum(dones) over time, entry (y, x) is True
# where no done lies in (x, y], i.e. counts[y] - counts[x] <= 0 (always True above the diagonal).
# `python benchmarks/compare_reference.py --check-patch` checks, in this venv, that both return
# the same arrays.
#
# Mava's pyproject cannot be installed as is: five of its dependencies come from git (gigastep,
# id-marl-eval, smaclite, a JaxMARL fork) or bring MuJoCo (brax). None of them is used by rec_mappo,
# rec_ippo or mat on CoordSum or RWARE, so the PyPI ones are installed pinned (jax < 0.7, as Mava pins it)
# and the others are replaced by empty stubs that only satisfy the imports.
set -euo pipefail
DIR=${1:-.reference}
COMMIT=d2ac38b9d695624bdce62743a18b175c6fe03d83  # the liyheng/MAGPO commit these figures were taken on
PYTHON=${PYTHON:-python3.11}
mkdir -p "$DIR"
MAGPO_SRC=${MAGPO_SRC:-https://github.com/liyheng/MAGPO}
if [ ! -d "$DIR/MAGPO" ]; then
  git clone -q --no-checkout "$MAGPO_SRC" "$DIR/MAGPO"
  git -C "$DIR/MAGPO" checkout -q "$COMMIT"
fi
echo "source: $DIR/MAGPO at $(git -C "$DIR/MAGPO" rev-parse HEAD) (cloned from $(git -C "$DIR/MAGPO" remote get-url origin))"
[ -x "$DIR/venv/bin/python" ] || "$PYTHON" -m venv "$DIR/venv"
PIP="$DIR/venv/bin/pip"
"$PIP" install -q "jax==0.6.2" "jaxlib==0.6.2" "flax==0.10.3" "numpy==1.26.4" "scipy==1.12.0" "chex==0.1.90" \
  "optax==0.2.8" "distrax==0.1.5" "hydra-core==1.3.2" "omegaconf==2.3.1" "colorama==0.4.6" "gymnasium==1.0.0" \
  "flashbax==0.1.3" "tensorflow-probability==0.25.0" "neptune==1.14.0.post2" "tensorboard-logger==0.1.0" \
  "type_enforced==2.13.1" "jraph==0.0.6.dev0" "protobuf==3.20.3" "orbax-checkpoint==0.12.8" "dm-env==1.6" \
  "jaxtyping==0.3.11" "safetensors==0.8.0" "seaborn==0.13.2" matplotlib pillow requests huggingface_hub tqdm
# jax-pinning packages whose declared requirements would move jax: installed without their dependencies
"$PIP" install -q --no-deps "jumanji==1.1.2" "esquilax==2.1.0" "jaxmarl==0.2.0" "gymnax==1.0.1" \
  "jax-tqdm==0.4.0" "matrax==0.0.5" "lbforaging==2.0.0" "rware==2.0.0"
# Connector: the released code makes `Connector-v2` (mava/configs/env/scenario/con-*.yaml), which jumanji 1.1.2
# no longer registers (its Connector-v3 draws boards from another generator). jumanji 1.1.1 registers v2, so it
# goes into a folder of its own that benchmarks/compare_reference.py puts first on PYTHONPATH for Connector
# runs only; every other task keeps 1.1.2.
[ -d "$DIR/jumanji-1.1.1/jumanji" ] || "$PIP" install -q --no-deps --target "$DIR/jumanji-1.1.1" "jumanji==1.1.1"

STUBS="$DIR/stubs"
mkdir -p "$STUBS/gigastep/gigastep_env" "$STUBS/marl_eval" "$STUBS/brax/envs"
echo "class ScenarioBuilder: pass  # stub: gigastep is imported, never used on these tasks" > "$STUBS/gigastep/__init__.py"
echo "class GigastepEnv: pass" > "$STUBS/gigastep/gigastep_env/__init__.py"
: > "$STUBS/marl_eval/__init__.py"
printf 'class JsonLogger:  # stub: the JSON logger is disabled by default\n    def __init__(self, *a, **k): pass\n' \
  > "$STUBS/marl_eval/json_tools.py"
: > "$STUBS/brax/__init__.py"
echo "class State: pass  # stub: only the MaBrax wrapper uses brax" > "$STUBS/brax/envs/__init__.py"
# The decay-mask patch (see the top of this file). Idempotent: a file that already has the _loop
# method is left alone; a file whose method is not the released one is refused.
"$DIR/venv/bin/python" - "$DIR/MAGPO/mava/networks/retention.py" <<'PATCH'
import sys
from pathlib import Path

path = Path(sys.argv[1])
source = path.read_text()
name = "_get_decay_matrix_mask_timestep"
original = f"    def {name}(self, ts_dones: Array) -> Array:\n"
if f"def {name}_loop(" in source:
    print(f"patch: {path}: {name} already vectorised (the original kept as {name}_loop)")
    sys.exit(0)
if source.count(original) != 1 or "for i in range(T):" not in source:
    sys.exit(f"patch: {path}: the released {name} was not found; refusing to patch")
vectorised = f'''    def {name}(self, ts_dones: Array) -> Array:
        """Patched by benchmarks/reference/setup.sh (speed only): the loop version below in closed form.

        With counts = cumsum(ts_dones) over time, entry (y, x) is True where no done lies in (x, y]:
        counts[y] - counts[x] <= 0 (always True for y < x, as the loop leaves it).
        """
        counts = jnp.cumsum(ts_dones.astype(jnp.int32), axis=1)  # B, T
        return counts[:, :, jnp.newaxis] - counts[:, jnp.newaxis, :] <= 0  # B, T, T

'''
source = source.replace(original, vectorised + original.replace(name, f"{name}_loop"))
path.write_text(source)
print(f"patch: {path}: {name} vectorised (the original kept as {name}_loop)")
PATCH
echo "ready: $DIR (python $DIR/venv/bin/python, PYTHONPATH $STUBS:$DIR/MAGPO)"
