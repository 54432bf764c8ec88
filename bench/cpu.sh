#!/usr/bin/env bash
# The CPU part of the benchmark suite, in one call: the figures of bench/RESULTS.md's
# section "One run of bench/cpu.sh" come from one such run (about 30 minutes on
# 2 cores; run nothing else meanwhile).
#
#   bench/cpu.sh OUTDIR
#   BIOFVM=/tmp/biofvm_lod bench/cpu.sh OUTDIR   # BioFVM's LOD solver side by side
#                                                # (built by bench/biofvm.sh)
#
# Each part writes JSON lines (and a log) to OUTDIR, in this order:
#   1. diffusion.py: BioFVM's problem (oxygen D = 1e5 plus D = 1e3 fields, decay
#      0.1/min, h = 20 um, dt = 0.01 min) at 64^3 and 128^3 x 8 fields, float32 and
#      float64, every method, with the NumPy baseline, the copy bandwidth, BioFVM's
#      3D cosine-mode error and, with BIOFVM set, BioFVM's own LOD solver;
#   2. diffusion.py at 256^3 x 8 fields, float32: explicit, implicit and LOD;
#   3. model.py: the 32-field model step at 64^3, dt = 2 min, in plain stencil
#      passes and as a fraction of the copy bandwidth, with the cells' sub-steps
#      at their positivity limit alone beside it (--cells-unstiff) and the step
#      group by group (--parts);
#   4. ensemble.py: vmap over 1, 8, 27 and 64 organoids of 24^3 and 32^3 against one
#      grid of as many voxels, with its PNG;
#   5. gradient.py: a gradient through the organoid over a day against the forward
#      run (time and peak memory);
#   6. devices.py on 4 forced host devices: an ensemble (weak and strong), and one
#      grid in slabs (strong, weak, and the implicit solve alone);
#   7. the accuracy test of the production step (tests/test_verification.py,
#      oxygen at dt = 2 min against dt = 0.05 min; a slow test).
# SMOKE=1 runs the same at tiny sizes (about 5 minutes; the accuracy test keeps its
# size), to try the script. Give an OUTDIR outside the repository (or under out/,
# which git ignores): files the repository does not ignore mark every line "-dirty".
set -u
out=${1:?usage: bench/cpu.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
if [ -n "${BIOFVM:-}" ] && [ ! -x "$BIOFVM" ]; then
  echo "bench/cpu.sh: BIOFVM=$BIOFVM is not an executable file (build it with bench/biofvm.sh)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
biofvm=()
[ -n "${BIOFVM:-}" ] && biofvm=(--biofvm "$BIOFVM")
if [ "${SMOKE:-0}" = 1 ]; then
  sizes="16"; big=24; rep=1; model="--n 16"; ens="--n 8 --batches 1 8 --steps 2 --repeats 1"
  grad="--n 8 --days 1"; dev="--n 12 --steps 2 --repeats 1"
else
  sizes="64 128"; big=256; rep=5; model="--n 64"; ens="--n 24 32 --batches 1 8 27 64 --steps 5 --repeats 3"
  grad="--n 32 --days 1"; dev="--n 16 --steps 5 --repeats 3"
fi
failed=0
step() {  # step NAME COMMAND...
  local name=$1; shift
  echo "== $name ($(date -u +%T))"
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [ $rc = 0 ] || failed=1
  echo "   exit $rc ($(date -u +%T))"; tail -n 30 "$out/$name.log"
}
{ grep -m1 'model name' /proc/cpuinfo; echo "cores: $(nproc)"
  $py -c 'import jax, jaxlib; print("jax", jax.__version__, "jaxlib", jaxlib.__version__, jax.devices())'
  echo "commit $(git describe --always --dirty 2>/dev/null || echo "${TMESIM_COMMIT:-unknown}")"
  echo "BioFVM: ${BIOFVM:-not run (BIOFVM unset)}"; } | tee "$out/device.txt"
step diffusion $py bench/diffusion.py --sizes $sizes --fields 8 --dtypes float32 float64 \
  --repeats $rep "${biofvm[@]}" --out "$out/diffusion.jsonl"
step diffusion_big $py bench/diffusion.py --sizes $big --fields 8 --dtypes float32 \
  --methods explicit implicit lod --repeats 3 --skip-accuracy --out "$out/diffusion.jsonl"
step model $py bench/model.py $model --dts 2.0 --repeats $rep --cells-unstiff --parts \
  --out "$out/model.jsonl"
step ensemble $py bench/ensemble.py $ens --out "$out/ensemble.jsonl" --plot "$out/ensemble.png"
step gradient $py bench/gradient.py $grad --checkpoints 2 --out "$out/gradient.jsonl"
step devices $py bench/devices.py $dev --devices 1 2 4 --out "$out/devices.jsonl"
step slabs $py bench/devices.py $dev --devices 1 2 4 --slabs --weak --implicit \
  --out "$out/devices.jsonl"
step accuracy $py -m pytest -q -p no:cacheprovider -o addopts="" -m slow \
  tests/test_verification.py -k production_step
exit $failed
