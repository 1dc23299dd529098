// GENACCEL_HOST_DEVICE: a function callable from host code and, under nvcc, from device code.
#pragma once

#if defined(__CUDACC__)
#define GENACCEL_HOST_DEVICE __host__ __device__
#else
#define GENACCEL_HOST_DEVICE
#endif
