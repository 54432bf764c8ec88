#!/usr/bin/env bash
# The GPU part of the benchmark suite, in one call (under 8 minutes on an H200).
#
#   bench/gpu.sh OUTDIR
#
# Installs the project (no dependencies: JAX with CUDA, h5py, optax and
# matplotlib must be there), then, each part under its own time limit so that
# a slow part cannot take the rest with it, writing JSON lines (and logs) to
# OUTDIR:
#   1. tests/test_gpu.py: float32 on the GPU against float64 on the CPU;
#   2. bench/diffusion.py: BioFVM's problem (oxygen D = 1e5 plus D = 1e3 fields,
#      decay 0.1, h = 20 um, dt = 0.01) at 64^3, 128^3, 256^3 x 8 fields,
#      explicit, implicit and LOD plans, with the device's copy bandwidth;
#   3. bench/model.py: the 32-field model at 64^3 and 128^3, dt = 2 min;
#   4. bench/ensemble.py: vmap over 1, 8, 64 organoids of 24^3 against one grid of
#      24^3, 48^3, 96^3, with its PNG.
# Test it on a CPU first with SMOKE=1 (tiny sizes).
set -u
out=${1:?usage: bench/gpu.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export TMESIM_COMMIT=${TMESIM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "${SMOKE:-0}" = 1 ]; then
  sizes="16 24"; model_n="16"; ens="--n 8 --batches 1 8 --steps 2 --repeats 1"; rep=1
else
  sizes="64 128 256"; model_n="64 128"; ens="--n 24 --batches 1 8 64 --steps 5 --repeats 3"; rep=5
fi
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%T))"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "   exit $? ($(date -u +%T))"; tail -n 25 "$out/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $py -c 'import jax; print("jax", jax.__version__, jax.devices())'; } | tee "$out/device.txt"
$py -c "import tmesim" 2>/dev/null || \
  $py -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || \
  { echo "install failed"; cat "$out/install.log"; exit 1; }
step gpu_test 90 $py -m pytest -q -p no:cacheprovider -o addopts="" tests/test_gpu.py
step diffusion 150 $py bench/diffusion.py --sizes $sizes --fields 8 --dtypes float32 \
  --methods explicit implicit lod --repeats $rep --copy-mb 256 --out "$out/diffusion.jsonl"
step model 150 $py bench/model.py --n $model_n --dts 2.0 --repeats 3 --out "$out/model.jsonl"
step ensemble 140 $py bench/ensemble.py $ens --out "$out/ensemble.jsonl" --plot "$out/ensemble.png"
