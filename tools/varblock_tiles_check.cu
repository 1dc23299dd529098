// Host-side check of the CUDA block-sparse kernels' variable-block tile policies (no GPU needed):
// VarRowTile + VarBlockTiles (the forward's and dQ kernel's row tiles and key tiles, fwd.cuh) and
// VarKeyMajorQueryTiles (the dK/dV kernel's query tiles and key masks, bwd.cuh) run on the CPU, and
// the (query head, query, key) pairs they make the kernels compute are counted against a brute-force
// enumeration of the plan: every selected pair exactly once, nothing else, every query row owned by
// exactly one CTA. Random partitions (empty, single-token and long blocks, per-head and broadcast
// offsets and plans, GQA, one side uniform with any block size), then corrupted plans and offsets as
// a check_plan=False call may hand them (every tile must stay inside q / k, every walk must end).
//
//   nvcc -std=c++17 -O1 -I include -x cu tools/varblock_tiles_check.cu -o /tmp/varblock_tiles_check
//   /tmp/varblock_tiles_check [cases]      # exit 0: all cases pass
//
// tests/attention/test_block_sparse_varblock_tiles.py builds and runs it where nvcc is found.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "genaccel/attention/block_sparse/bwd.cuh"

using namespace genaccel::attention;

namespace {

int failures = 0;

#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      if (failures++ < 20) {                                \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                           \
        std::printf("\n");                                  \
      }                                                     \
    }                                                       \
  } while (0)

struct Side {
  bool variable;
  int uniform_block;             // block size when uniform
  int rows, blocks;              // offsets rows (Bo * Ho) and block count
  int bo, ho;                    // offsets batch / head extent (1 = broadcast)
  std::vector<int32_t> offsets;  // (bo, ho, blocks + 1)
  int largest = 1;
};

// Random cut points from 0 to n into `blocks` blocks: sorted, repeated cuts make empty blocks.
void random_offsets(std::mt19937& rng, Side& s, int n, bool allow_empty) {
  s.offsets.assign(static_cast<size_t>(s.bo) * s.ho * (s.blocks + 1), 0);
  for (int r = 0; r < s.bo * s.ho; ++r) {
    std::vector<int> cuts;
    if (allow_empty || n - 1 < s.blocks - 1) {
      std::uniform_int_distribution<int> d(0, n);
      for (int i = 0; i < s.blocks - 1; ++i) cuts.push_back(d(rng));
    } else {
      std::vector<int> all(n - 1);
      for (int i = 0; i < n - 1; ++i) all[i] = i + 1;
      std::shuffle(all.begin(), all.end(), rng);
      cuts.assign(all.begin(), all.begin() + (s.blocks - 1));
    }
    std::sort(cuts.begin(), cuts.end());
    int32_t* o = s.offsets.data() + static_cast<size_t>(r) * (s.blocks + 1);
    o[0] = 0;
    for (int i = 0; i < s.blocks - 1; ++i) o[i + 1] = cuts[i];
    o[s.blocks] = n;
    for (int i = 0; i < s.blocks; ++i) s.largest = std::max(s.largest, o[i + 1] - o[i]);
  }
}

struct Problem {
  int B, H, Hkv, nq, nk;
  Side q, k;
  int bi, hi;  // plan extents (1 = broadcast)
  std::vector<int32_t> kv_indices, kv_counts;
  int max_kv;
  std::vector<uint8_t> mask;  // (bi, hi, Tq, Tk)
  std::vector<int32_t> km_offsets, km_queries;
  BlockSparseFwdParams p{};
  BlockSparseBwdCudaParams bp{};

  int Tq() const { return q.blocks; }
  int Tk() const { return k.blocks; }

  // The block of side s holding token t for (b, h), by the offsets or uniformly.
  int block_of(const Side& s, int b, int h, int t) const {
    if (!s.variable) return t / s.uniform_block;
    const int32_t* o = s.offsets.data() + (static_cast<size_t>(s.bo == 1 ? 0 : b) * s.ho + (s.ho == 1 ? 0 : h)) *
                                              (s.blocks + 1);
    int c = static_cast<int>(std::upper_bound(o, o + s.blocks + 1, t) - o) - 1;  // o[c] <= t < o[c + 1]
    while (o[c + 1] <= t) ++c;
    return c;
  }
  bool selected(int b, int h, int qb, int kb) const {
    const size_t row = (static_cast<size_t>(bi == 1 ? 0 : b) * hi + (hi == 1 ? 0 : h)) * Tq() + qb;
    return mask[row * Tk() + kb] != 0;
  }

  void fill_params() {
    p = BlockSparseFwdParams{};
    p.kv_indices = kv_indices.data();
    p.kv_counts = kv_counts.data();
    p.max_kv_blocks = max_kv;
    p.idx_batch_stride = bi == 1 ? 0 : static_cast<int64_t>(hi) * Tq() * max_kv;
    p.idx_head_stride = hi == 1 ? 0 : static_cast<int64_t>(Tq()) * max_kv;
    p.cnt_batch_stride = bi == 1 ? 0 : static_cast<int64_t>(hi) * Tq();
    p.cnt_head_stride = hi == 1 ? 0 : Tq();
    p.batch = B, p.heads = H, p.kv_heads = Hkv;
    p.seqlen_q = nq, p.seqlen_k = nk, p.head_dim = 64;
    p.block_q = q.variable ? q.largest : q.uniform_block;
    p.block_k = k.variable ? k.largest : k.uniform_block;
    p.num_q_blocks = Tq();
    p.num_k_blocks = Tk();
    p.scale = 1.f;
    if (q.variable) {
      p.q_offsets = q.offsets.data();
      p.qoff_batch_stride = q.bo == 1 ? 0 : static_cast<int64_t>(q.ho) * (q.blocks + 1);
      p.qoff_head_stride = q.ho == 1 ? 0 : q.blocks + 1;
    }
    if (k.variable) {
      p.k_offsets = k.offsets.data();
      p.koff_batch_stride = k.bo == 1 ? 0 : static_cast<int64_t>(k.ho) * (k.blocks + 1);
      p.koff_head_stride = k.ho == 1 ? 0 : k.blocks + 1;
    }
    bp = BlockSparseBwdCudaParams{};
    bp.bwd.fwd = p;
    bp.plan.q_offsets = km_offsets.data();
    bp.plan.q_list = km_queries.data();
    bp.plan.off_batch_stride = bi == 1 ? 0 : static_cast<int64_t>(hi) * (Tk() + 1);
    bp.plan.off_head_stride = hi == 1 ? 0 : Tk() + 1;
    const int64_t L = static_cast<int64_t>(Tq()) * max_kv;
    bp.plan.list_batch_stride = bi == 1 ? 0 : hi * L;
    bp.plan.list_head_stride = hi == 1 ? 0 : L;
  }
};

// The plan of `mask` (kv_indices ascending, or descending) and its key-major form, as
// block_mask_to_indices / block_sparse_key_major_plan make them.
void plan_from_mask(Problem& pr, bool descending) {
  const int Tq = pr.Tq(), Tk = pr.Tk();
  pr.max_kv = std::max(Tk, 1);
  pr.kv_indices.assign(static_cast<size_t>(pr.bi) * pr.hi * Tq * pr.max_kv, -1);
  pr.kv_counts.assign(static_cast<size_t>(pr.bi) * pr.hi * Tq, 0);
  pr.km_offsets.assign(static_cast<size_t>(pr.bi) * pr.hi * (Tk + 1), 0);
  pr.km_queries.assign(static_cast<size_t>(pr.bi) * pr.hi * Tq * pr.max_kv, 0);
  for (int r = 0; r < pr.bi * pr.hi; ++r) {
    for (int qb = 0; qb < Tq; ++qb) {
      int n = 0;
      for (int i = 0; i < Tk; ++i) {
        const int kb = descending ? Tk - 1 - i : i;
        if (pr.mask[(static_cast<size_t>(r) * Tq + qb) * Tk + kb])
          pr.kv_indices[(static_cast<size_t>(r) * Tq + qb) * pr.max_kv + n++] = kb;
      }
      pr.kv_counts[static_cast<size_t>(r) * Tq + qb] = n;
    }
    int32_t* off = pr.km_offsets.data() + static_cast<size_t>(r) * (Tk + 1);
    int32_t* list = pr.km_queries.data() + static_cast<size_t>(r) * Tq * pr.max_kv;
    int n = 0;
    for (int kb = 0; kb < Tk; ++kb) {
      off[kb] = n;
      for (int qb = 0; qb < Tq; ++qb)
        if (pr.mask[(static_cast<size_t>(r) * Tq + qb) * Tk + kb]) list[n++] = qb;
    }
    off[Tk] = n;
  }
}

// Walks every CTA of the forward (and dQ) grid and of the dK/dV grid; with `exact`, checks the
// counted pairs against the plan, else only that every tile stays in range and every walk ends.
void walk(const Problem& pr, bool exact, const char* name) {
  const BlockSparseFwdParams& p = pr.p;
  const VarRowTiling tiling = var_row_tiling(p);
  const int64_t kSteps = 50'000'000;
  std::vector<int> fwd_count, row_count;
  for (int b = 0; b < pr.B; ++b)
    for (int h = 0; h < pr.H; ++h) {
      fwd_count.assign(static_cast<size_t>(pr.nq) * pr.nk, 0);
      row_count.assign(pr.nq, 0);
      for (int x = 0; x < pr.Tq() * tiling.tiles_per_block; ++x) {
        const VarRowTile<128> rt128(p, b, h, x, tiling.tiles_per_block);
        const VarRowTile<64> rt64(p, b, h, x, tiling.tiles_per_block);
        const int begin = tiling.block_q == 64 ? rt64.begin : rt128.begin;
        const int end = tiling.block_q == 64 ? rt64.end : rt128.end;
        const int qb = tiling.block_q == 64 ? rt64.qb : rt128.qb;
        if (begin >= end) continue;
        const int row_end = std::min(end, begin + tiling.block_q);
        EXPECT(begin >= 0 && row_end <= pr.nq, "%s: rows [%d, %d) of nq %d", name, begin, row_end, pr.nq);
        for (int r = begin; r < row_end; ++r) ++row_count[r];
        VarBlockTiles<64> tiles(p, b, h, qb);
        KeyTile t;
        int64_t steps = 0;
        while (tiles.next(t)) {
          EXPECT(++steps < kSteps, "%s: forward walk does not end", name);
          if (steps >= kSteps) break;
          EXPECT(t.len > 0 && t.len <= 64 && t.start >= 0 && t.start + t.len <= pr.nk, "%s: key tile [%d, +%d) of nk %d",
                 name, t.start, t.len, pr.nk);
          if (!exact) continue;
          for (int r = begin; r < row_end; ++r)
            for (int key = t.start; key < t.start + t.len; ++key) ++fwd_count[static_cast<size_t>(r) * pr.nk + key];
        }
      }
      if (!exact) continue;
      for (int r = 0; r < pr.nq; ++r) {
        EXPECT(row_count[r] == 1, "%s: b %d h %d row %d owned by %d CTAs", name, b, h, r, row_count[r]);
        const int qb = pr.block_of(pr.q, b, h, r);
        for (int key = 0; key < pr.nk; ++key) {
          const int want = pr.selected(b, h, qb, pr.block_of(pr.k, b, h, key)) ? 1 : 0;
          EXPECT(fwd_count[static_cast<size_t>(r) * pr.nk + key] == want, "%s: forward b %d h %d q %d key %d: %d, want %d",
                 name, b, h, r, key, fwd_count[static_cast<size_t>(r) * pr.nk + key], want);
        }
      }
    }

  // dK/dV: per (batch, kv head), every 64-key tile; pairs counted per query head of the group.
  const int group = pr.H / pr.Hkv;
  std::vector<int> bwd_count;
  for (int b = 0; b < pr.B; ++b)
    for (int kvh = 0; kvh < pr.Hkv; ++kvh) {
      bwd_count.assign(static_cast<size_t>(group) * pr.nq * pr.nk, 0);
      for (int k0 = 0; k0 < pr.nk; k0 += 64) {
        VarKeyMajorQueryTiles<64> tiles(pr.bp, b, kvh, k0);
        VarQueryTile t;
        int64_t steps = 0;
        const int tile_keys = std::min(64, pr.nk - k0);
        while (tiles.next(t)) {
          EXPECT(++steps < kSteps, "%s: dK/dV walk does not end", name);
          if (steps >= kSteps) break;
          EXPECT(t.head >= kvh * group && t.head < (kvh + 1) * group, "%s: head %d", name, t.head);
          EXPECT(t.len > 0 && t.len <= 64 && t.start >= 0 && t.start + t.len <= pr.nq,
                 "%s: query tile [%d, +%d) of nq %d", name, t.start, t.len, pr.nq);
          EXPECT(t.key_begin >= 0 && t.key_begin < t.key_end && t.key_end <= tile_keys, "%s: keys [%d, %d) of %d", name,
                 t.key_begin, t.key_end, tile_keys);
          if (!exact) continue;
          for (int qr = t.start; qr < t.start + t.len; ++qr)
            for (int key = k0 + t.key_begin; key < k0 + t.key_end; ++key)
              ++bwd_count[(static_cast<size_t>(t.head - kvh * group) * pr.nq + qr) * pr.nk + key];
        }
      }
      if (!exact) continue;
      for (int g = 0; g < group; ++g) {
        const int h = kvh * group + g;
        for (int qr = 0; qr < pr.nq; ++qr) {
          const int qb = pr.block_of(pr.q, b, h, qr);
          for (int key = 0; key < pr.nk; ++key) {
            const int want = pr.selected(b, h, qb, pr.block_of(pr.k, b, h, key)) ? 1 : 0;
            const int got = bwd_count[(static_cast<size_t>(g) * pr.nq + qr) * pr.nk + key];
            EXPECT(got == want, "%s: dK/dV b %d h %d q %d key %d: %d, want %d", name, b, h, qr, key, got, want);
          }
        }
      }
    }
}

Problem random_problem(std::mt19937& rng, int c) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Problem pr;
  pr.Hkv = pick(1, 2);
  pr.H = pr.Hkv * pick(1, 3);
  pr.B = pick(1, 2);
  pr.nq = pick(1, 400);
  pr.nk = pick(1, 400);
  if (c % 7 == 0) pr.nq = pick(300, 700), pr.nk = pick(300, 700);  // long blocks
  // Sides: variable (per head or broadcast) or uniform with any block size; at least one variable.
  const int mode = c % 3;  // 0: both variable, 1: q only, 2: k only
  for (int s = 0; s < 2; ++s) {
    Side& side = s == 0 ? pr.q : pr.k;
    const int n = s == 0 ? pr.nq : pr.nk;
    side.variable = mode == 0 || (mode == 1 && s == 0) || (mode == 2 && s == 1);
    if (side.variable) {
      const bool per_head = pick(0, 1) == 1;
      side.bo = per_head ? pr.B : 1;
      side.ho = per_head ? pr.H : 1;
      const int kind = pick(0, 3);
      side.blocks = kind == 0 ? n : kind == 1 ? pick(1, 4) : pick(1, 40);  // kind 0: single-token blocks
      random_offsets(rng, side, n, kind != 0 && pick(0, 1) == 1);
    } else {
      side.uniform_block = pick(0, 1) ? 64 * pick(1, 4) : pick(1, 150);
      side.blocks = (n + side.uniform_block - 1) / side.uniform_block;
    }
  }
  const bool per_head_plan = pick(0, 1) == 1;
  pr.bi = per_head_plan ? pr.B : pick(0, 1) ? pr.B : 1;
  pr.hi = per_head_plan ? pr.H : 1;
  const double density = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  pr.mask.assign(static_cast<size_t>(pr.bi) * pr.hi * pr.Tq() * pr.Tk(), 0);
  for (auto& m : pr.mask) m = std::uniform_real_distribution<double>(0.0, 1.0)(rng) < density;
  plan_from_mask(pr, pick(0, 3) == 0);
  pr.fill_params();
  return pr;
}

// Corrupts a valid problem as a trusted call may: offsets out of range and decreasing, plan entries
// and counts out of range, key-major lists clamped the way run.cpp clamps given ones.
void corrupt(std::mt19937& rng, Problem& pr) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (Side* s : {&pr.q, &pr.k})
    if (s->variable)
      for (auto& o : s->offsets)
        if (pick(0, 2) == 0) o = pick(-1000, 3000);
  for (auto& i : pr.kv_indices)
    if (pick(0, 3) == 0) i = pick(-5, pr.Tk() + 5);
  for (auto& c : pr.kv_counts)
    if (pick(0, 3) == 0) c = pick(-3, pr.max_kv + 3);
  // run.cpp: given key-major offsets clamped into [0, L] and made non-decreasing, queries into [0, Tq).
  const int L = pr.Tq() * pr.max_kv;
  for (size_t r = 0; r < pr.km_offsets.size() / (pr.Tk() + 1); ++r) {
    int32_t* o = pr.km_offsets.data() + r * (pr.Tk() + 1);
    int running = 0;
    for (int i = 0; i <= pr.Tk(); ++i) {
      if (pick(0, 3) == 0) o[i] = pick(-10, L + 10);
      running = std::max(running, std::min(std::max(o[i], 0), L));
      o[i] = running;
    }
  }
  for (auto& qb : pr.km_queries) qb = std::min(std::max(pick(0, 3) == 0 ? pick(-5, pr.Tq() + 5) : qb, 0), pr.Tq() - 1);
  // block_q / block_k are the caller's word too (not checked): smaller or larger than the blocks.
  pr.fill_params();
  pr.p.block_q = pr.bp.bwd.fwd.block_q = pick(1, 300);
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  std::mt19937 rng(12345);
  for (int c = 0; c < cases; ++c) {
    Problem pr = random_problem(rng, c);
    const std::string name = "case " + std::to_string(c);
    walk(pr, true, name.c_str());
    corrupt(rng, pr);
    walk(pr, false, (name + " corrupted").c_str());
    if (failures) {
      std::printf("%s: B %d H %d Hkv %d nq %d nk %d Tq %d Tk %d q %s k %s\n", name.c_str(), pr.B, pr.H, pr.Hkv, pr.nq,
                  pr.nk, pr.Tq(), pr.Tk(), pr.q.variable ? "variable" : "uniform",
                  pr.k.variable ? "variable" : "uniform");
      break;
    }
  }
  std::printf("varblock_tiles_check: %d cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
