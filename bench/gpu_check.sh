#!/usr/bin/env bash
# One check of a GPU machine: build with CUDA, run the CUDA tests, memcheck a small run, benchmark.
#
#   bench/gpu_check.sh OUTDIR
#
# Leaves in OUTDIR (plain names): build.log (nvidia-smi, install, import check,
# how the module links libstdc++ and whether an input error raises cleanly),
# pytest_cuda.log (CUDA tests, then the hypothesis fuzz alone, printing each case), hostile_cuda.json,
# memcheck.log, bench.log (benchmarks and the SLA stage profile), bench_attention.json, bench_sla.json,
# bench_sla_wgmma.json (on sm_90: SLA forward and backward at topk 0.05 on the opt-in wgmma kernels,
# --set backend=sm90), bench_radial.json, bench_svg2.json, bench_dcae.json (DC-AE-V's chunk-causal conv
# vs cuDNN on the padded chunks, bf16), bench_xquant-speed.json (XQuant's fused
# rematerialisation vs dequantize+matmul, peak memory, decode steps),
# summary.json (exit code, seconds and log of every step). A failing step does not stop the next.
# Exit code: 0 when every step passed, else 1.
#
# Made for the GPU machines of shared/DESIGN.md (Python 3.12, torch 2.11 + CUDA 13.0, nvcc, cmake,
# ninja, scikit-build-core, pytest, numpy; no network). Extra wheels (nvidia-cutlass, hypothesis,
# matplotlib, tqdm) may be unpacked somewhere on PYTHONPATH, e.g. /tmp/site; the script keeps
# PYTHONPATH and works without any of them (no plot without matplotlib; hypothesis tests skip).
#
# Environment knobs: PYTHON (interpreter), GENACCEL_CUDA_ARCHS (default: this card's arch only, which
# halves the compile), GENACCEL_CHECK_BUDGET_S (default 450 s: with the timeouts' kill grace the
# whole run stays under 8 minutes),
# GENACCEL_GIT_COMMIT (the commit being checked; the copy on a GPU machine usually has no .git),
# GENACCEL_CHECK_SKIP_BUILD=1 (check the genaccel already importable instead of building).
set -u -o pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET=${GENACCEL_CHECK_BUDGET_S:-450}
BENCH_RESERVE=150   # seconds kept back for the last step (the block-sparse benchmark, whose JSON gets committed)
START=$(date +%s)
STEPS=$(mktemp)     # name<TAB>rc<TAB>seconds<TAB>timeout<TAB>log<TAB>note, outside OUTDIR
trap 'rm -f "$STEPS"' EXIT

if [ -z "${GENACCEL_GIT_COMMIT:-}" ] && git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
  GENACCEL_GIT_COMMIT=$(git -C "$ROOT" rev-parse HEAD)
fi
export GENACCEL_GIT_COMMIT=${GENACCEL_GIT_COMMIT:-}

write_summary() {
  "$PY" - "$STEPS" "$OUT/summary.json" "$START" "$BUDGET" <<'EOF'
import json, os, sys, time
steps_file, out, start, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
steps = []
for line in open(steps_file):
    name, rc, secs, limit, log, note = line.rstrip("\n").split("\t")
    rc = int(rc)
    status = ("ok" if rc == 0 else "skipped" if rc == -1 else
              "timeout" if rc in (124, 137) else "failed")
    steps.append({"name": name, "status": status, "rc": rc, "seconds": int(secs),
                  "timeout_s": int(limit), "log": log, "note": note or None})
summary = {
    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
    "total_seconds": int(time.time()) - start,
    "budget_s": budget,
    "git_commit": os.environ.get("GENACCEL_GIT_COMMIT") or None,
    "pythonpath": os.environ.get("PYTHONPATH") or None,
    "ok": all(s["status"] == "ok" for s in steps),
    "steps": steps,
}
with open(out, "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
EOF
}

# step NAME CAP LOG [--last] CMD...: runs CMD with a timeout of CAP seconds, cut so that the budget
# (minus the benchmark's reserve, except for the last step) is never exceeded; appends to OUT/LOG.
step() {
  local name=$1 cap=$2 log=$3 reserve=$BENCH_RESERVE
  shift 3
  if [ "$1" = "--last" ]; then reserve=0; shift; fi
  local now left limit rc t0
  now=$(date +%s)
  left=$((BUDGET - (now - START) - reserve))
  limit=$((cap < left ? cap : left))
  {
    echo "=== $name: $(date -u +%H:%M:%S) timeout ${limit}s"
    echo "\$ $*"
  } >>"$OUT/$log"
  if [ "$limit" -lt 10 ]; then
    echo "skipped: no time left in the ${BUDGET}s budget" >>"$OUT/$log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" -1 0 "$limit" "$log" "no time left" >>"$STEPS"
    write_summary
    return 1
  fi
  t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" >>"$OUT/$log" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $(($(date +%s) - t0))s" >>"$OUT/$log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" "$log" "" >>"$STEPS"
  write_summary
  return $rc
}

# 1. The card and driver.
step nvidia_smi 20 build.log \
  bash -c 'nvidia-smi && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv'

# 2. Build and install. Only this card's architecture unless told otherwise (the default list
# compiles every kernel twice). Installed into a fresh --target dir put first on PYTHONPATH: it
# works whether or not site-packages is writable, and no older genaccel carried on PYTHONPATH (e.g.
# in /tmp/site) can shadow the one just built. --no-deps/--no-index: torch and numpy are already
# there and there is no network to ask.
if [ -z "${GENACCEL_CUDA_ARCHS:-}" ]; then
  CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')
  case "$CAP" in
    9.0) GENACCEL_CUDA_ARCHS="90a-real" ;;
    8.*) GENACCEL_CUDA_ARCHS="80-real" ;;  # sm_80 code runs on every 8.x card
  esac
fi
if [ "${GENACCEL_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  # Re-run the checks against the genaccel already importable (a machine built earlier).
  step build 10 build.log bash -c 'echo "build skipped: GENACCEL_CHECK_SKIP_BUILD=1"'
else
  SITE="$ROOT/build/gpu_check_site"
  rm -rf "$SITE"
  step build 300 build.log env GENACCEL_CUDA=ON ${GENACCEL_CUDA_ARCHS:+GENACCEL_CUDA_ARCHS=$GENACCEL_CUDA_ARCHS} \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v --target "$SITE" .
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

# 3. The installed module loads and has its CUDA kernels.
step import 60 build.log "$PY" -c '
import genaccel, torch
print("genaccel from", genaccel.__file__)
print("build_info", genaccel.build_info())
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
assert genaccel.has_cuda_kernels(), "genaccel was built without its CUDA kernels"
'

# 3b. How the module links libstdc++ (an image whose toolchain put libstdc++ code into the module
# crashed on error messages with integers), and whether such an error raises cleanly.
step toolchain 60 build.log bash -c '
  so=$(ls "$0"/genaccel/_C*.so 2>/dev/null | head -n1)
  [ -n "$so" ] || so=$("$1" -c "import genaccel._C as m; print(m.__file__)")
  echo "module: $so"; ldd "$so" | grep -E "stdc\+\+|gomp|libgcc|cublas" || true
  echo "libstdc++ locale/ostream symbols defined inside the module: $({ nm -C --defined-only "$so"; nm -C -D --defined-only "$so"; } 2>/dev/null | grep -c -E "std::locale|codecvt|basic_ostream")"
  "$1" tools/error_path_probe.py' "${SITE:-.}" "$PY"

# 4. On sm_90 first each product of the opt-in wgmma kernels on its own (Q K^T via lse, P via V =
# identity, the backward's), so that a wrong one is named; if any is wrong, the later steps skip the
# wgmma kernels (GENACCEL_SKIP_WGMMA=1) instead of spending the budget on their failures.
if ! step wgmma_probe 40 pytest_cuda.log "$PY" tools/wgmma_probe.py; then
  export GENACCEL_SKIP_WGMMA=1
fi
# Likewise SLA's second stream: if two streams do not reproduce one stream bit for bit, the rest runs on
# one (GENACCEL_SLA_ONE_STREAM=1), so that the benchmarks still measure correct code. genaccel reads the
# variable once, when it loads: exported here, it holds for every later step's process.
if ! step streams_probe 60 pytest_cuda.log "$PY" -m pytest -q -p no:cacheprovider tests/attention/test_sla.py \
    -k side_stream_matches_one_stream; then
  export GENACCEL_SLA_ONE_STREAM=1
fi
# The CUDA tests (tests needing hypothesis skip themselves when it is missing); the fuzz on its
# own, printing each case, so that a crash names the case it died in. (It ran under cuda-gdb while a
# host crash on the GPU image was hunted: the module's private libstdc++, fixed in cmake/torch.cmake.)
step pytest_cuda 150 pytest_cuda.log "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider \
  --ignore=tests/attention/test_block_sparse_fuzz.py tests
step fuzz_cuda 120 pytest_cuda.log env GENACCEL_FUZZ_VERBOSE=1 \
  "$PY" -m pytest -m cuda -q -s -x -p no:cacheprovider tests/attention/test_block_sparse_fuzz.py
# The hostile-input battery on CUDA tensors (a sample of its cases, each in a forked child; no memory
# limit on CUDA): its JSON lists every case's outcome.
step hostile_cuda 120 pytest_cuda.log "$PY" -m genaccel.testing.hostile --device cuda --timeout 30 \
  --json "$OUT/hostile_cuda.json"

# 5. memcheck on small block-sparse (uniform and variable-size blocks, trusted corrupted plans and
# offsets) and SLA runs. API errors are not reported: torch probes the driver
# with calls that are meant to fail; out-of-bounds accesses in our kernels exit with 3. The smoke runs
# its GENACCEL_SLA_CHUNK_BYTES case in a child process, which --target-processes all checks too.
SAN=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
         "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")/compute-sanitizer"; do
  [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
done
if [ -n "$SAN" ]; then
  step memcheck 150 memcheck.log "$SAN" --tool memcheck --report-api-errors no --error-exitcode 3 \
    --target-processes all "$PY" tools/cuda_correctness_smoke.py
else
  step memcheck 150 memcheck.log bash -c 'echo "compute-sanitizer not found (PATH, /usr/local/cuda)"; exit 127'
fi

# 6. The benchmarks whose JSON goes to bench/results/<device>/ (bench/results/README.md), and
# where SLA's forward spends its time; SLA (the open issue) first, the block-sparse sweep last.
step bench_sla 200 bench.log "$PY" -m genaccel bench --family sla --device cuda --no-progress \
  --json "$OUT/bench_sla.json"
step bench_sla_wgmma 100 bench.log bash -c 'if [ "${GENACCEL_SKIP_WGMMA:-0}" != 1 ] && "$1" -c "import torch, sys; sys.exit(torch.cuda.get_device_capability() != (9, 0))"; then
    "$1" -m genaccel bench --family sla --device cuda --no-progress --set backend=sm90 --set topks=0.05 \
      --set modes=fwd,bwd --json "$2/bench_sla_wgmma.json"
  else echo "bench_sla_wgmma: not an sm_90 device or the wgmma probe failed, skipped"; fi' _ "$PY" "$OUT"
# (its one-stream stages run in a child process with GENACCEL_SLA_ONE_STREAM=1, unless already set)
step sla_profile 100 bench.log "$PY" tools/sla_cuda_profile.py
step bench_radial 60 bench.log "$PY" -m genaccel bench --family radial --device cuda --no-progress \
  --set decay_factors=0.2,1.0 --json "$OUT/bench_radial.json"
step bench_svg2 90 bench.log "$PY" -m genaccel bench --family svg2 --device cuda --no-progress \
  --set top_ps=0.8,0.9 --json "$OUT/bench_svg2.json"
step bench_xquant 90 bench.log "$PY" -m genaccel bench --family xquant-speed --device cuda --no-progress \
  --json "$OUT/bench_xquant-speed.json"
step bench_dcae 60 bench.log "$PY" -m genaccel bench --family dcae --device cuda --no-progress \
  --json "$OUT/bench_dcae.json"
step bench 300 bench.log --last "$PY" -m genaccel bench --device cuda --no-progress \
  --json "$OUT/bench_attention.json"

write_summary
"$PY" - "$OUT/summary.json" "$OUT" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for st in s["steps"]:
    print(f"{st['name']:<12} {st['status']:<8} rc={st['rc']:<4} {st['seconds']:>4}s  {st['log']}")
print(f"total {s['total_seconds']}s; results in {sys.argv[2]}")
sys.exit(0 if s["ok"] else 1)
EOF
