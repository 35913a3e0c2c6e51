#include "common/parallel.h"

#include <ATen/Parallel.h>

#include <mutex>
#include <set>
#include <thread>

namespace pathgen {

int64_t parallel_threads(int64_t n) {
  std::mutex mu;
  std::set<std::thread::id> seen;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  });
  return static_cast<int64_t>(seen.size());
}

}  // namespace pathgen
