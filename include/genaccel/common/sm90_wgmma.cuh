// Thin inline-PTX wrappers for Hopper's warpgroup tensor-core path (sm_90a only): wgmma.mma_async
// with operands in 128-byte-swizzled shared memory (matrix descriptors) or A in registers, and the
// fences around it. Torch-free. Every function traps when compiled for another architecture, so
// kernels that use them may be instantiated for every target and launched on sm_90 only.
//
// Shared-memory operand layout (the one both K-major and MN-major descriptors below describe): a
// tile of `rows` rows x (64 * panels) 16-bit columns is stored as `panels` panels of rows x 64
// columns (128 bytes per row, panel p at byte p * rows * 128); within a panel, the 16-byte chunk c of
// row r sits at r * 128 + ((c ^ (r % 8)) * 16). That is the hardware's 128-byte swizzle (address
// bits 4-6 XOR bits 7-9), so every tile must start 1024-byte aligned. The descriptors encode the PTX
// ISA's canonical 128-byte-swizzle layouts ("Shared Memory Matrix Layout" of wgmma): K-major, 8-row
// groups at the stride offset; MN-major, 64-element column blocks at the leading offset and 8-row k
// groups at the stride offset (the assignment CUTLASS's make_gmma_desc makes too).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace genaccel::attention::sm90 {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GENACCEL_SM90A_DEVICE 1
#else
#define GENACCEL_SM90A_DEVICE 0
#endif

// Byte offset of (row, 16-byte chunk) in a tile of `rows` rows laid out as above.
__device__ __forceinline__ uint32_t sw128_offset(int rows, int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// Matrix descriptor (PTX ISA, "matrix-descriptor-format"): start address, leading and stride byte
// offsets (all >> 4), base offset 0 (1024-byte aligned tiles), swizzle mode 1 = 128 bytes.
__device__ __forceinline__ uint64_t descriptor(uint32_t smem_addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((smem_addr >> 4) & 0x3FFF) | (static_cast<uint64_t>((leading_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((stride_bytes >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

// A K-major operand (rows = the M or N dimension, columns = K), k16 step `kstep` of a tile of
// `rows` rows starting at `tile`, rows from `row0` on (a multiple of 8): 8-row groups 1024 bytes
// apart (the stride offset); the leading offset is unused with this swizzle (1 by convention). A k16
// step is 32 bytes of a 128-byte row: step s lies in panel s / 4 at byte (s % 4) * 32, an offset the
// hardware swizzles like any other address bits.
__device__ __forceinline__ uint64_t k_major_desc(uint32_t tile, int rows, int row0, int kstep) {
  return descriptor(tile + (kstep >> 2) * rows * 128 + row0 * 128 + (kstep & 3) * 32, 16, 1024);
}

// An MN-major B operand (rows = K, columns = N, N contiguous): k16 step `kstep` of a tile of `rows`
// rows: 16 rows from row 16 * kstep on. 8-row K groups are 1024 bytes apart (stride offset) and the
// 64-column panels rows * 128 bytes (leading offset).
__device__ __forceinline__ uint64_t mn_major_desc(uint32_t tile, int rows, int kstep) {
  return descriptor(tile + kstep * 16 * 128, rows * 128, 1024);
}

__device__ __forceinline__ void fence() {
#if GENACCEL_SM90A_DEVICE
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void commit_group() {
#if GENACCEL_SM90A_DEVICE
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

template <int kPending>
__device__ __forceinline__ void wait_group() {
#if GENACCEL_SM90A_DEVICE
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#else
  __trap();
#endif
}

// Shared memory written through the generic proxy (ordinary stores, cp.async) that wgmma reads
// next: each writing thread fences before the barrier that publishes it.
__device__ __forceinline__ void fence_async_proxy() {
#if GENACCEL_SM90A_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  __trap();
#endif
}

// Keeps the compiler from moving accesses to the registers of `d` across the asynchronous wgmma
// that reads or writes them (it sees only the issue, not the completion).
template <int kTiles>
__device__ __forceinline__ void fence_registers(float (&d)[kTiles][4]) {
#pragma unroll
  for (int j = 0; j < kTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) asm volatile("" : "+f"(d[j][c])::"memory");
}

// The same for A fragments in registers (the rs form): their packing must be complete before the
// wgmma.fence that precedes the product.
template <int kSteps>
__device__ __forceinline__ void fence_registers(uint32_t (&a)[kSteps][4]) {
#pragma unroll
  for (int i = 0; i < kSteps; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) asm volatile("" : "+r"(a[i][c])::"memory");
}

// Accumulator layout of m64nN: warp w of the warpgroup holds rows 16w..16w+15 exactly as an
// mma.sync m16n8 C fragment per n8 tile: d[j][0..1] row lane/4, d[j][2..3] row lane/4 + 8, columns
// 8j + 2 * (lane % 4) + {0, 1}. A from registers uses the mma.sync m16n8k16 A-fragment layout.
template <class T, int N>
struct Wgmma;

#if GENACCEL_SM90A_DEVICE
// The accumulator operands of the asm statements below: registers %0.. and "+f" constraints.
#define GENACCEL_WGMMA_TILE(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define GENACCEL_WGMMA_ACC_64(d) \
  GENACCEL_WGMMA_TILE(d, 0), GENACCEL_WGMMA_TILE(d, 1), GENACCEL_WGMMA_TILE(d, 2), GENACCEL_WGMMA_TILE(d, 3), \
  GENACCEL_WGMMA_TILE(d, 4), GENACCEL_WGMMA_TILE(d, 5), GENACCEL_WGMMA_TILE(d, 6), GENACCEL_WGMMA_TILE(d, 7)
#define GENACCEL_WGMMA_ACC_128(d) \
  GENACCEL_WGMMA_ACC_64(d), GENACCEL_WGMMA_TILE(d, 8), GENACCEL_WGMMA_TILE(d, 9), GENACCEL_WGMMA_TILE(d, 10), \
  GENACCEL_WGMMA_TILE(d, 11), GENACCEL_WGMMA_TILE(d, 12), GENACCEL_WGMMA_TILE(d, 13), GENACCEL_WGMMA_TILE(d, 14), \
  GENACCEL_WGMMA_TILE(d, 15)
#define GENACCEL_WGMMA_REGS_64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GENACCEL_WGMMA_REGS_128 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// The operands after the accumulators, numbered on from them: shared-memory A and B descriptors,
// then the accumulate flag and B's transpose (ss); register A, B descriptor, flag, transpose (rs).
#define GENACCEL_WGMMA_SS_64 "%32, %33, p, 1, 1, 0, %35", "%34"
#define GENACCEL_WGMMA_SS_128 "%64, %65, p, 1, 1, 0, %67", "%66"
#define GENACCEL_WGMMA_RS_64 "{%32, %33, %34, %35}, %36, p, 1, 1, %38", "%37"
#define GENACCEL_WGMMA_RS_128 "{%64, %65, %66, %67}, %68, p, 1, 1, %70", "%69"
#define GENACCEL_WGMMA_ASM(shape, type, regs, operands, flag) \
  "{\n.reg .pred p;\nsetp.ne.b32 p, " flag ", 0;\nwgmma.mma_async.sync.aligned." shape ".f32." type "." type " " regs \
  ", " operands ";\n}\n"
#define GENACCEL_WGMMA_EXPAND(macro, ...) macro(__VA_ARGS__)

// Wgmma<T, N> for one 16-bit type (PTX name `type`) and n extent N.
#define GENACCEL_WGMMA(T, type, N)                                                                            \
  template <>                                                                                                 \
  struct Wgmma<T, N> {                                                                                        \
    /* d (m64 x nN) = or += A B, A and B in shared memory; `accumulate` false overwrites d. kTransB: B is     \
       MN-major (its N dimension contiguous) rather than K-major. */                                          \
    template <int kTransB>                                                                                    \
    static __device__ __forceinline__ void ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b,         \
                                              bool accumulate) {                                              \
      asm volatile(GENACCEL_WGMMA_EXPAND(GENACCEL_WGMMA_ASM, "m64n" #N "k16", type, GENACCEL_WGMMA_REGS_##N,   \
                                         GENACCEL_WGMMA_SS_##N)                                               \
                   : GENACCEL_WGMMA_ACC_##N(d)                                                                \
                   : "l"(desc_a), "l"(desc_b), "r"(int(accumulate)), "n"(kTransB));                          \
    }                                                                                                         \
    /* The same with A (m64 x k16) from registers, in the mma.sync A-fragment layout of each warp. */         \
    template <int kTransB>                                                                                    \
    static __device__ __forceinline__ void rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b,  \
                                              bool accumulate) {                                              \
      asm volatile(GENACCEL_WGMMA_EXPAND(GENACCEL_WGMMA_ASM, "m64n" #N "k16", type, GENACCEL_WGMMA_REGS_##N,   \
                                         GENACCEL_WGMMA_RS_##N)                                               \
                   : GENACCEL_WGMMA_ACC_##N(d)                                                                \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(int(accumulate)),           \
                     "n"(kTransB));                                                                           \
    }                                                                                                         \
  };

GENACCEL_WGMMA(__nv_bfloat16, "bf16", 64)
GENACCEL_WGMMA(__nv_bfloat16, "bf16", 128)
GENACCEL_WGMMA(__half, "f16", 64)
GENACCEL_WGMMA(__half, "f16", 128)
#else
template <class T, int N>
struct Wgmma {
  template <int kTransB>
  static __device__ __forceinline__ void ss(float (&)[N / 8][4], uint64_t, uint64_t, bool) { __trap(); }
  template <int kTransB>
  static __device__ __forceinline__ void rs(float (&)[N / 8][4], const uint32_t (&)[4], uint64_t, bool) { __trap(); }
};
#endif

}  // namespace genaccel::attention::sm90
