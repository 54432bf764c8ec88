// Times BioFVM's own constant-coefficient LOD diffusion-decay solver
// (diffusion_decay_solver__constant_coefficients_LOD_3D, the one PhysiCell's
// initialize_microenvironment() registers for 3-D runs), called as PhysiCell's
// main loop calls it: microenvironment.simulate_diffusion_decay(dt).
// Problem: N^3 voxels of 20 um, F substrates (0: D = 1e5 um^2/min, others 1e3),
// decay 0.1/min, dt = 0.01 min, no-flux boundaries (no Dirichlet nodes), no
// sources/sinks, initial condition 1 + 0.5 cos(pi x/L) cos(pi y/L) cos(pi z/L).
// One warm-up step (sets up the Thomas coefficients), then R repeats of S steps;
// ms/step per repeat. BioFVM is double precision (std::vector<double> per voxel).
//
// Links BioFVM (not copied here; bench/biofvm.sh builds it from a source folder).
// BioFVM licence: "BSD 3-Clause License (see https://opensource.org/licenses/BSD-3-Clause)
// Copyright (c) 2015-2021, Paul Macklin and the BioFVM Project" (PhysiCell licenses/BioFVM.txt).
//
// Usage: biofvm_lod [N=128] [F=8] [R=5] [S=10]; threads from OMP_NUM_THREADS.
//        biofvm_lod N accuracy: instead, the error of substrate 0 (D = 1e5) at t = 1 min
//        (100 steps) from 1 + 0.5 cos(pi x/L) cos(pi y/L) cos(pi z/L) (the 3D mode)
//        and, apart, from 1 + 0.5 cos(pi x/L) (the 1D mode): the relative L2 error of
//        the perturbation against the exact solution, as bench/diffusion.py computes
//        it for tmesim's methods.
// stdout: one JSON line; BioFVM's own messages and a sanity check go to stderr.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <omp.h>
#include <string>
#include <vector>
#include "BioFVM.h"

using namespace BioFVM;

// Relative L2 error of the perturbation after 100 steps of dt = 0.01 min from the cosine
// mode along the first `axes` axes (1 or 3), substrate 0 alone (D = 1e5, decay 0.1).
static double cosine_error(int N, int axes) {
  const double h = 20.0, dt = 0.01, L = N * h, D = 1e5, decay = 0.1, k = M_PI / L;
  const int steps = 100;
  Microenvironment M;
  M.name = "accuracy"; M.spatial_units = "micron"; M.time_units = "min";
  M.set_density(0, "s0", "dimensionless", D, decay);
  M.resize_space_uniform(0, L, 0, L, 0, L, h);
  M.diffusion_decay_solver = diffusion_decay_solver__constant_coefficients_LOD_3D;
  auto mode = [&](int i, int j, int kk) {
    double c = 0.5 * cos(k * (i + 0.5) * h);
    if (axes == 3) c *= cos(k * (j + 0.5) * h) * cos(k * (kk + 0.5) * h);
    return c;
  };
  for (int kk = 0; kk < N; kk++)
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) M.density_vector(M.voxel_index(i, j, kk))[0] = 1.0 + mode(i, j, kk);
  for (int s = 0; s < steps; s++) M.simulate_diffusion_decay(dt);
  const double t = steps * dt, mean = exp(-decay * t), fade = exp(-(axes * D * k * k + decay) * t);
  double err = 0, norm = 0;
  for (int kk = 0; kk < N; kk++)
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) {
        const double exact = fade * mode(i, j, kk);
        const double e = (M.density_vector(M.voxel_index(i, j, kk))[0] - mean) - exact;
        err += e * e;
        norm += exact * exact;
      }
  return sqrt(err / norm);
}

int main(int argc, char** argv) {
  if (argc > 2 && std::string(argv[2]) == "accuracy") {
    const int N = atoi(argv[1]);
    std::streambuf* out = std::cout.rdbuf(std::cerr.rdbuf());  // BioFVM chatter -> stderr
    const double e3 = cosine_error(N, 3), e1 = cosine_error(N, 1);
    std::cout.rdbuf(out);
    printf("{\"peer\": \"BioFVM\", \"version\": \"%s\", \"n\": %d, \"dtype\": \"float64\", "
           "\"cosine3d_rel_error\": %.6e, \"cosine_rel_error\": %.6e}\n",
           BioFVM_Version.c_str(), N, e3, e1);
    return 0;
  }
  const int N = argc > 1 ? atoi(argv[1]) : 128, F = argc > 2 ? atoi(argv[2]) : 8;
  const int R = argc > 3 ? atoi(argv[3]) : 5, S = argc > 4 ? atoi(argv[4]) : 10;
  const double h = 20.0, dt = 0.01, L = N * h;
  std::streambuf* out = std::cout.rdbuf(std::cerr.rdbuf());  // BioFVM chatter -> stderr

  Microenvironment M;
  M.name = "bench"; M.spatial_units = "micron"; M.time_units = "min";
  M.set_density(0, "s0", "dimensionless", 1e5, 0.1);
  for (int f = 1; f < F; f++) M.add_density("s" + std::to_string(f), "dimensionless", 1e3, 0.1);
  M.resize_space_uniform(0, L, 0, L, 0, L, h);
  M.diffusion_decay_solver = diffusion_decay_solver__constant_coefficients_LOD_3D;  // as PhysiCell
  if ((int)M.number_of_voxels() != N * N * N) { fprintf(stderr, "mesh is not N^3\n"); return 1; }

  const double k = M_PI / L;
  for (int kk = 0; kk < N; kk++)
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) {
        const double c = 0.5 * cos(k * (i + 0.5) * h) * cos(k * (j + 0.5) * h) * cos(k * (kk + 0.5) * h);
        std::vector<double>& v = M.density_vector(M.voxel_index(i, j, kk));
        for (int f = 0; f < F; f++) v[f] = 1.0 + (f + 1) * c / F;
      }

  M.simulate_diffusion_decay(dt);  // warm-up: Thomas set-up (prints "Using method ...")
  std::vector<double> ms;
  for (int r = 0; r < R; r++) {
    auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < S; s++) M.simulate_diffusion_decay(dt);
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / S);
  }

  // Sanity (stderr): with no-flux walls each LOD sweep keeps the sum and divides
  // it by (1 + dt*decay/3), so mean(s0) must be (1 + dt*0.1/3)^(-3 steps).
  double mean = 0;
  for (unsigned n = 0; n < M.number_of_voxels(); n++) mean += M.density_vector(n)[0];
  mean /= M.number_of_voxels();
  const int steps = 1 + R * S;
  fprintf(stderr, "sanity: mean(s0) = %.15g, expected %.15g after %d steps\n", mean,
          pow(1.0 + dt * 0.1 / 3.0, -3.0 * steps), steps);

  std::cout.rdbuf(out);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double med = R % 2 ? sorted[R / 2] : 0.5 * (sorted[R / 2 - 1] + sorted[R / 2]);
  printf("{\"peer\": \"BioFVM\", \"version\": \"%s\", \"n\": %d, \"fields\": %d, \"dtype\": \"float64\", "
         "\"threads\": %d, \"ms_per_step_median\": %.4f, \"ms_per_step_all\": [",
         BioFVM_Version.c_str(), N, F, omp_get_max_threads(), med);
  for (int r = 0; r < R; r++) printf("%s%.4f", r ? ", " : "", ms[r]);
  printf("]}\n");
  return 0;
}
