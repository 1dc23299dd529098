# genaccel_add_variant(<family> <variant>): adds one variant's sources by the layout of
# docs/adding_a_family.md, so that a new family or variant is one line in CMakeLists.txt:
#   csrc/ops/<family>/<variant>.cpp        schema, checks, CPU registration          -> _C
#   csrc/cpu/<family>/<variant>/*.cpp      CPU kernels (vector ISA flags)            -> _C
#   csrc/ops/<family>/<variant>_cuda.cpp   CUDA registration                         -> _C, CUDA builds
#   csrc/cuda/<family>/<variant>/*.cpp     host-side CUDA runners (torch, cuBLAS)    -> _C, CUDA builds
#   csrc/cuda/<family>/<variant>/*.cu      torch-free CUDA kernels  -> genaccel_cuda_kernels, CUDA builds
# `common` as the variant adds a family's (or, with family `common`, the project's) shared sources.
function(genaccel_add_variant family variant)
  if(family STREQUAL "common")
    set(dir "common")
  else()
    set(dir "${family}/${variant}")
  endif()
  file(GLOB cpu_sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/csrc/cpu/${dir}/*.cpp")
  file(GLOB op_sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/csrc/ops/${dir}.cpp")
  set_source_files_properties(${cpu_sources} DIRECTORY "${PROJECT_SOURCE_DIR}"
                              PROPERTIES COMPILE_OPTIONS "${GENACCEL_CPU_FLAGS}")
  target_sources(_C PRIVATE ${op_sources} ${cpu_sources})
  if(GENACCEL_WITH_CUDA)
    file(GLOB cuda_op_sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/csrc/ops/${dir}_cuda.cpp")
    file(GLOB cuda_host_sources CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/csrc/cuda/${dir}/*.cpp")
    file(GLOB cuda_kernels CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/csrc/cuda/${dir}/*.cu")
    target_sources(_C PRIVATE ${cuda_op_sources} ${cuda_host_sources})
    target_sources(genaccel_cuda_kernels PRIVATE ${cuda_kernels})
  endif()
endfunction()
