#pragma once
// How many threads ATen's parallel_for really runs in this extension's code.
//
// parallel_for is a header template; with OpenMP as torch's backend it spawns threads only in
// code compiled with -fopenmp, else it runs the whole range on the calling thread. The CPU
// kernels rely on it, so `pathgen info` and the tests ask this probe instead of trusting the flags.
#include <cstdint>

namespace pathgen {

// Distinct threads that ran a body of at::parallel_for over [0, n) with grain 1.
int64_t parallel_threads(int64_t n);

}  // namespace pathgen
