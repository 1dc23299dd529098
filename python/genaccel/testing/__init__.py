"""What the tests, the benchmarks and tools/cuda_correctness_smoke.py share: the tolerance table against the
float64 references, the relative error, dtype names and random input makers."""

import torch

# ||out - ref|| / ||ref|| against the float64 reference (shared/DESIGN.md).
RTOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (the absolute error when ref is all zeros)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm()
    return ((out - ref).norm() / denom).item() if denom > 0 else (out - ref).norm().item()


def make_input(gen, shape, dtype, device, layout="contig"):
    """Random (B, H, N, D) tensor with the given memory layout; the layout is built after the cast
    and the move, so it is what the op receives."""
    B, H, N, D = shape

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(dtype=dtype, device=device)

    if layout == "contig":
        t = rnd(B, H, N, D)
    elif layout == "transposed":  # a (B, N, H, D) buffer viewed as (B, H, N, D)
        t = rnd(B, N, H, D).transpose(1, 2)
        assert not t.is_contiguous() or min(H, N) <= 1 or t.numel() == 0
    elif layout == "sliced":  # every other element of the last dim: stride(-1) == 2
        t = rnd(B, H, N, 2 * D)[..., ::2]
        assert t.stride(-1) == 2
    elif layout == "narrow":  # stride(-1) == 1 but rows longer than D
        t = rnd(B, H, N, D + 8)[..., :D]
        assert t.stride(-2) == D + 8
    elif layout == "expanded":  # one batch entry broadcast over B (batch stride 0)
        t = rnd(1, H, N, D).expand(B, H, N, D)
        assert t.stride(0) == 0 or B <= 1
    else:
        raise AssertionError(layout)
    assert t.shape == (B, H, N, D)
    return t


def make_mask(gen, shape, kind="random", density=0.5):
    """Bool block mask (Bm, Hm, Tq, Tk) of the given kind."""
    Bm, Hm, Tq, Tk = shape
    if kind == "full":
        return torch.ones(shape, dtype=torch.bool)
    if kind == "empty":
        return torch.zeros(shape, dtype=torch.bool)
    if kind == "single":  # one (batch, head, query block, key block) pair in the whole mask
        m = torch.zeros(shape, dtype=torch.bool)
        idx = [int(torch.randint(0, s, (1,), generator=gen)) for s in shape]
        m[tuple(idx)] = True
        return m
    if kind == "single_last":  # only the last (partial) query block x the last (partial) key block
        m = torch.zeros(shape, dtype=torch.bool)
        m[..., -1, -1] = True
        return m
    m = torch.rand(shape, generator=gen) < density
    if kind == "empty_rows":  # first and last query block select nothing; the second selects something
        m[..., 0, :] = False
        m[..., -1, :] = False
        if Tq > 2:
            m[..., 1, int(torch.randint(0, Tk, (1,), generator=gen))] = True
    else:
        assert kind == "random", kind
    return m


def random_block_offsets(gen, rows, n, blocks, allow_empty):
    """int32 (rows, blocks + 1) token offsets from 0 to n for variable-size blocks: random cut points
    (repeated ones make empty blocks when allow_empty)."""
    out = []
    for _ in range(rows):
        if allow_empty:
            cuts = torch.randint(0, n + 1, (blocks - 1,), generator=gen)
        else:
            cuts = torch.randperm(n - 1, generator=gen)[: blocks - 1] + 1
        out.append(torch.cat([torch.zeros(1, dtype=torch.long), cuts.sort().values, torch.full((1,), n)]))
    return torch.stack(out).int()


def quantizer_input(gen, rows, k):
    """float32 (rows, k) for the group quantizer: rows of mixed scales, some with an offset, so that
    groups differ in range and some hold no 0 at all."""
    x = torch.randn(rows, k, generator=gen) * torch.rand(rows, 1, generator=gen) * 3
    return x + torch.randn(rows, 1, generator=gen) * (torch.rand(rows, 1, generator=gen) < 0.3)
