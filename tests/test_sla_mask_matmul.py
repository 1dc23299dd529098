"""op sla_mask_matmul: mask @ x for a 0/1 mask at float32 accuracy (on CUDA a bf16 tensor-core GEMM
over x split into three bf16 parts; the CUDA linear branch of SLA sums its per-block terms with it)."""

import pytest
import torch

from conftest import CUDA


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not CUDA, reason="needs a GPU and genaccel built with CUDA")])])
@pytest.mark.parametrize("cols", [96, 97], ids=["cols%4==0", "odd_cols"])  # vectorised / scalar split on CUDA
def test_sla_mask_matmul_has_float32_accuracy(device, cols, gen):
    """mask @ x for a 0/1 mask: float32-accurate (on CUDA through x split into three bf16 parts; a
    plain bf16 product would be off by ~1e-3), over a wide dynamic range of x."""
    mask = torch.rand(3, 40, 70, generator=gen) < 0.6
    x = torch.randn(3, 70, cols, generator=gen) * torch.logspace(-6, 6, cols).view(1, 1, cols).float()
    got = torch.ops.genaccel.sla_mask_matmul(mask.to(device), x.to(device))
    expected = mask.double() @ x.double()
    assert got.dtype == torch.float32 and got.shape == (3, 40, cols)
    # Per column of x (scales 1e-6 .. 1e6), so that small columns count as much as large ones.
    col_err = (got.cpu().double() - expected).norm(dim=(0, 1)) / expected.norm(dim=(0, 1))
    assert col_err.max() < 1e-6, col_err.max()


def test_sla_mask_matmul_rejects_bad_input(gen):
    mm = torch.ops.genaccel.sla_mask_matmul
    mask, x = torch.ones(2, 3, 4, dtype=torch.bool), torch.randn(2, 4, 5)
    with pytest.raises(RuntimeError, match="mask must be a 3-D"):
        mm(mask.float(), x)
    with pytest.raises(RuntimeError, match="x must be a 3-D"):
        mm(mask, x.double())
    with pytest.raises(RuntimeError, match=r"x must have shape \(2, 4, E\)"):
        mm(mask, x[:, :3])
    torch.library.opcheck(mm, (mask, x), test_utils=("test_schema", "test_faketensor"))
