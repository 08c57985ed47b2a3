#!/usr/bin/env bash
# Builds the paper's codebase (liyheng/MAGPO, on Mava) in a virtual environment of its own, so that
# benchmarks/bench_reference.py can time it against our scripts on the same machine, the same day.
#
#   bash benchmarks/reference/setup.sh [DIR]        # DIR defaults to .reference (git-ignored)
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
if [ ! -d "$DIR/MAGPO" ]; then
  git clone https://github.com/liyheng/MAGPO "$DIR/MAGPO"
  git -C "$DIR/MAGPO" checkout -q "$COMMIT"
fi
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

STUBS="$DIR/stubs"
mkdir -p "$STUBS/gigastep/gigastep_env" "$STUBS/marl_eval" "$STUBS/brax/envs"
echo "class ScenarioBuilder: pass  # stub: gigastep is imported, never used on these tasks" > "$STUBS/gigastep/__init__.py"
echo "class GigastepEnv: pass" > "$STUBS/gigastep/gigastep_env/__init__.py"
: > "$STUBS/marl_eval/__init__.py"
printf 'class JsonLogger:  # stub: the JSON logger is disabled by default\n    def __init__(self, *a, **k): pass\n' \
  > "$STUBS/marl_eval/json_tools.py"
: > "$STUBS/brax/__init__.py"
echo "class State: pass  # stub: only the MaBrax wrapper uses brax" > "$STUBS/brax/envs/__init__.py"
echo "ready: $DIR (python $DIR/venv/bin/python, PYTHONPATH $STUBS:$DIR/MAGPO)"
