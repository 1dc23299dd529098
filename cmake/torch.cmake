# Defines the INTERFACE target `torch_min`: torch's headers and core libraries, found by asking the
# building interpreter for torch.__file__. find_package(Torch) is avoided on purpose: with a CUDA
# torch it runs legacy FindCUDA, rewrites CUDA arch flags and can mix two torch installs
# (shared/BUILD_NOTES.md, pitfalls 2-8).
#
# Sets TORCH_ROOT, TORCH_VERSION and TORCH_CUDA_VERSION ("" for a CPU torch).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _torch_out OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE _torch_err RESULT_VARIABLE _torch_rc)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR
    "genaccel: cannot import torch with ${Python_EXECUTABLE}:\n${_torch_err}\n"
    "genaccel is compiled against the torch that runs it. Install torch first, then build without "
    "build isolation:\n    pip install torch\n    pip install --no-build-isolation .\n")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 TORCH_ROOT)
list(GET _torch_out 1 TORCH_VERSION)
list(LENGTH _torch_out _torch_n)
set(TORCH_CUDA_VERSION "")
if(_torch_n GREATER 2)
  list(GET _torch_out 2 TORCH_CUDA_VERSION)
endif()
message(STATUS "genaccel: torch ${TORCH_VERSION} at ${TORCH_ROOT} (CUDA: '${TORCH_CUDA_VERSION}')")

add_library(torch_min INTERFACE)
target_include_directories(torch_min SYSTEM INTERFACE
  "${TORCH_ROOT}/include" "${TORCH_ROOT}/include/torch/csrc/api/include")
target_link_libraries(torch_min INTERFACE
  "${TORCH_ROOT}/lib/libtorch.so" "${TORCH_ROOT}/lib/libtorch_cpu.so" "${TORCH_ROOT}/lib/libc10.so")
# torch's headers are built with the pre-C++11 ABI flag of the wheel; ask torch which one.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
  OUTPUT_VARIABLE _torch_abi OUTPUT_STRIP_TRAILING_WHITESPACE)
target_compile_definitions(torch_min INTERFACE _GLIBCXX_USE_CXX11_ABI=${_torch_abi})

# The module must share torch's libstdc++: streams and locales hold process-wide state. A GCC that
# ships libstdc++ only as a static archive (the GPU image's /opt/gcc 13.3) links a private copy into
# the module instead, and there formatting an integer into an error message crashed
# (bench/results/h200/CHECKS.md). With such a compiler, link the libstdc++.so.6 torch has loaded;
# the archive is then never searched for symbols the shared library already resolved.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  execute_process(COMMAND "${CMAKE_CXX_COMPILER}" -print-file-name=libstdc++.so
    OUTPUT_VARIABLE _gxx_libstdcxx OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT IS_ABSOLUTE "${_gxx_libstdcxx}")
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import torch; print(next(l.split()[-1] for l in open('/proc/self/maps') if '/libstdc++.so' in l))"
      OUTPUT_VARIABLE TORCH_LIBSTDCXX OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
    if(NOT _torch_rc EQUAL 0 OR NOT EXISTS "${TORCH_LIBSTDCXX}")
      message(FATAL_ERROR "genaccel: ${CMAKE_CXX_COMPILER} has no shared libstdc++ and the one torch "
        "loads was not found; build with a compiler that has libstdc++.so")
    endif()
    message(STATUS "genaccel: ${CMAKE_CXX_COMPILER} has no shared libstdc++; linking torch's ${TORCH_LIBSTDCXX}")
    target_link_libraries(torch_min INTERFACE "${TORCH_LIBSTDCXX}")
  endif()
endif()
