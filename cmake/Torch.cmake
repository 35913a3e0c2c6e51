# Locate the torch the build runs against (the user's runtime torch; pip must be
# called with --no-build-isolation) without torch's own TorchConfig.cmake, whose
# CUDA part asks for cuBLAS/cuSPARSE/nvrtc headers that a bare toolkit lacks.
#
# Defines:
#   TORCH_VERSION, TORCH_CUDA_VERSION ("" for a CPU build), TORCH_CXX11_ABI
#   TORCH_PARALLEL_OPENMP  ON when ATen's intra-op threads are OpenMP (ATen/Config.h)
#   TORCH_OPENMP_LIB       the OpenMP runtime torch ships in torch/lib ("" when none)
#   pathgen::torch        (INTERFACE target: headers, libc10 + libtorch_cpu)
#   pathgen::torch_cuda   (INTERFACE target: + libc10_cuda + libtorch_cuda), when CUDA is on

execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
"import os, torch, torch.utils.cpp_extension as ce
print(torch.__version__)
print(torch.version.cuda or '')
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))
print('|'.join(ce.include_paths()))
import importlib.util, site
extra = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for sub in ('nvidia/cu13/include', 'nvidia/cuda_runtime/include', 'nvidia/cu12/include'):
        p = os.path.join(sp, sub)
        if os.path.isdir(p): extra.append(p)
print('|'.join(extra))
import glob
libs = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), 'lib', 'libgomp*.so*')))
print('gomp:' + (libs[0] if libs else ''))"
  OUTPUT_VARIABLE _torch_out
  RESULT_VARIABLE _torch_rc
  ERROR_VARIABLE _torch_err
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "pathgen: cannot import torch with ${Python_EXECUTABLE}:\n${_torch_err}\n"
    "Install torch first and build with `pip install --no-build-isolation .` (see README).")
endif()
string(REPLACE "\n" ";" _torch_lines "${_torch_out}")
list(GET _torch_lines 0 TORCH_VERSION)
list(GET _torch_lines 1 TORCH_CUDA_VERSION)
list(GET _torch_lines 2 TORCH_CXX11_ABI)
list(GET _torch_lines 3 TORCH_LIB_DIR)
list(GET _torch_lines 4 _torch_inc)
string(REPLACE "|" ";" _torch_inc "${_torch_inc}")
list(GET _torch_lines -1 TORCH_OPENMP_LIB)  # last line: "gomp:<path or nothing>"
string(REGEX REPLACE "^gomp:" "" TORCH_OPENMP_LIB "${TORCH_OPENMP_LIB}")
list(REMOVE_AT _torch_lines -1)
list(LENGTH _torch_lines _n)
set(TORCH_CUDA_EXTRA_INCLUDES "")
if(_n GREATER 5)
  list(GET _torch_lines 5 TORCH_CUDA_EXTRA_INCLUDES)
  string(REPLACE "|" ";" TORCH_CUDA_EXTRA_INCLUDES "${TORCH_CUDA_EXTRA_INCLUDES}")
endif()
# ATen's parallel_for is a header template: with OpenMP as torch's backend it only runs threads in
# code compiled with -fopenmp (ParallelOpenMP.h tests _OPENMP), otherwise it calls the body once
set(TORCH_PARALLEL_OPENMP OFF)
foreach(_dir ${_torch_inc})
  if(EXISTS "${_dir}/ATen/Config.h")
    file(STRINGS "${_dir}/ATen/Config.h" _par REGEX "^#define AT_PARALLEL_OPENMP 1")
    if(_par)
      set(TORCH_PARALLEL_OPENMP ON)
    endif()
    break()
  endif()
endforeach()
message(STATUS "pathgen: ATen parallel backend OpenMP: ${TORCH_PARALLEL_OPENMP} (torch's runtime: '${TORCH_OPENMP_LIB}')")
message(STATUS "pathgen: torch ${TORCH_VERSION} (CUDA '${TORCH_CUDA_VERSION}', cxx11 abi ${TORCH_CXX11_ABI}) at ${TORCH_LIB_DIR}")

add_library(pathgen_torch INTERFACE)
add_library(pathgen::torch ALIAS pathgen_torch)
target_include_directories(pathgen_torch SYSTEM INTERFACE ${_torch_inc})
target_compile_definitions(pathgen_torch INTERFACE
  _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI}
  TORCH_EXTENSION_NAME=_C)
target_link_directories(pathgen_torch INTERFACE "${TORCH_LIB_DIR}")
target_link_libraries(pathgen_torch INTERFACE c10 torch_cpu)
