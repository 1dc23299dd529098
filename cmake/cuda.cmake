# Decides whether the CUDA kernels are built (GENACCEL_CUDA=AUTO|ON|OFF) and sets GENACCEL_WITH_CUDA.
# AUTO builds them when torch was built with CUDA and nvcc is found.
set(GENACCEL_WITH_CUDA OFF)
if(NOT GENACCEL_CUDA STREQUAL "OFF" AND TORCH_CUDA_VERSION)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(GENACCEL_WITH_CUDA ON)
  endif()
endif()
if(GENACCEL_CUDA STREQUAL "ON" AND NOT GENACCEL_WITH_CUDA)
  message(FATAL_ERROR "genaccel: GENACCEL_CUDA=ON but torch has no CUDA (torch.version.cuda='${TORCH_CUDA_VERSION}') or nvcc was not found")
endif()
if(GENACCEL_WITH_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # cuBLAS, for the SLA linear branch's TF32 GEMMs (csrc/cuda/common/blas.cpp): link the libcublas that
  # torch loads (one copy in the process; the toolkit beside nvcc may have none, as on the
  # development VM), else the toolkit's, with the toolkit's headers or else those beside the library.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import torch; print(next(l.split()[-1] for l in open('/proc/self/maps') if '/libcublas.so' in l))"
    OUTPUT_VARIABLE GENACCEL_CUBLAS_LIBRARY OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _cublas_rc
    ERROR_QUIET)
  if(_cublas_rc EQUAL 0 AND EXISTS "${GENACCEL_CUBLAS_LIBRARY}")
    get_filename_component(_cublas_dir "${GENACCEL_CUBLAS_LIBRARY}" DIRECTORY)
  elseif(TARGET CUDA::cublas)
    set(GENACCEL_CUBLAS_LIBRARY CUDA::cublas)
    set(_cublas_dir "${CUDAToolkit_LIBRARY_DIR}")
  else()
    message(FATAL_ERROR "genaccel: importing torch (CUDA ${TORCH_CUDA_VERSION}) loaded no libcublas and "
      "the CUDA toolkit at ${CUDAToolkit_LIBRARY_DIR} has none; cannot link the kernels' cuBLAS calls")
  endif()
  find_path(GENACCEL_CUBLAS_INCLUDE_DIR cublas_v2.h
    HINTS ${CUDAToolkit_INCLUDE_DIRS} "${_cublas_dir}/../include" NO_DEFAULT_PATH)
  if(NOT GENACCEL_CUBLAS_INCLUDE_DIR)
    message(FATAL_ERROR "genaccel: cublas_v2.h found neither in ${CUDAToolkit_INCLUDE_DIRS} nor beside "
      "${GENACCEL_CUBLAS_LIBRARY}")
  endif()
  # Linked after CUDA::cudart, so its include dir (which may hold a second copy of the CUDA
  # runtime headers) comes after the toolkit's.
  add_library(genaccel_cublas INTERFACE)
  target_include_directories(genaccel_cublas SYSTEM INTERFACE "${GENACCEL_CUBLAS_INCLUDE_DIR}")
  target_link_libraries(genaccel_cublas INTERFACE "${GENACCEL_CUBLAS_LIBRARY}")
  message(STATUS "genaccel: cuBLAS ${GENACCEL_CUBLAS_LIBRARY}, headers ${GENACCEL_CUBLAS_INCLUDE_DIR}")
  message(STATUS "genaccel: CUDA kernels ON, archs ${GENACCEL_CUDA_ARCHS}, nvcc ${CMAKE_CUDA_COMPILER_VERSION}")
else()
  message(STATUS "genaccel: CUDA kernels OFF")
endif()
