#pragma once
// Turn runtime flags into compile-time template parameters:
//   dispatch_flags(has_noise, guided, clip, [&](auto kNoise, auto kGuided, auto kClip) {
//     kernel<scalar_t, kNoise, kGuided, kClip>(...);   // kNoise etc. are std::bool_constant
//   });
#include <type_traits>

namespace pathgen {

template <typename F>
inline void dispatch_flags(bool a, F&& f) {
  if (a) f(std::true_type{});
  else f(std::false_type{});
}

template <typename F>
inline void dispatch_flags(bool a, bool b, F&& f) {
  dispatch_flags(a, [&](auto ka) { dispatch_flags(b, [&](auto kb) { f(ka, kb); }); });
}

template <typename F>
inline void dispatch_flags(bool a, bool b, bool c, F&& f) {
  dispatch_flags(a, [&](auto ka) { dispatch_flags(b, c, [&](auto kb, auto kc) { f(ka, kb, kc); }); });
}

}  // namespace pathgen
