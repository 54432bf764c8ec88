#!/usr/bin/env bash
# Builds bench/biofvm_lod.cpp against a BioFVM source folder, the way PhysiCell
# builds BioFVM, into one binary.
#
#   bench/biofvm.sh [BIOFVM_DIR] [OUT=/tmp/biofvm_lod]
#
# BIOFVM_DIR (argument or environment) is a folder holding BioFVM.h and its .cpp
# files (PhysiCell's BioFVM/ folder, or a BioFVM checkout), or a PhysiCell checkout
# (its BioFVM/ is used). BioFVM's sources are not copied into this repository.
# Example, from a PhysiCell mirror:
#   git -C PhysiCell.git archive HEAD BioFVM | tar -x -C /tmp/biofvm_src
#   bench/biofvm.sh /tmp/biofvm_src/BioFVM /tmp/biofvm_lod
#   OMP_NUM_THREADS=2 /tmp/biofvm_lod 128 8 5 10     # N F R S -> one JSON line
#
# Flags: PhysiCell's Makefile (1.14.2), line 24:
#   CFLAGS := -march=$(ARCH) -O3 -fomit-frame-pointer -mfpmath=both -fopenmp -m64 -std=c++11
# with ARCH := native (line 14) and CC := g++ (line 4; PHYSICELL_CPP overrides, as there).
# Objects: BioFVM_OBJECTS + pugixml_OBJECTS (Makefile lines 40-41, 54), each
# compiled with "$(COMPILE_COMMAND) -c ./BioFVM/<file>.cpp" as in its rules.
set -eu
src=${1:-${BIOFVM_DIR:?usage: bench/biofvm.sh BIOFVM_DIR [OUT]  (or set BIOFVM_DIR)}}
out=${2:-/tmp/biofvm_lod}
[ -f "$src/BioFVM.h" ] || { [ -f "$src/BioFVM/BioFVM.h" ] && src=$src/BioFVM; }
[ -f "$src/BioFVM.h" ] || { echo "no BioFVM.h in $src" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
cc=${PHYSICELL_CPP:-g++}
cflags="-march=native -O3 -fomit-frame-pointer -mfpmath=both -fopenmp -m64 -std=c++11"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
objs=()
for f in BioFVM_vector BioFVM_mesh BioFVM_microenvironment BioFVM_solvers BioFVM_matlab \
         BioFVM_utilities BioFVM_basic_agent BioFVM_MultiCellDS BioFVM_agent_container pugixml; do
  [ -f "$src/$f.cpp" ] || { echo "skip: no $f.cpp" >&2; continue; }
  echo "+ $cc $cflags -c $src/$f.cpp -o $build/$f.o" >&2
  $cc $cflags -c "$src/$f.cpp" -o "$build/$f.o"
  objs+=("$build/$f.o")
done
echo "+ $cc $cflags -I$src -o $out $here/biofvm_lod.cpp ${objs[*]}" >&2
$cc $cflags -I"$src" -o "$out" "$here/biofvm_lod.cpp" "${objs[@]}"
echo "built $out" >&2
