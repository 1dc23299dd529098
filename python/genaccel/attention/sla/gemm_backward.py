"""The CUDA kernel of genaccel::sla_bwd: the sparse branch is the block-sparse backward op (on CUDA
the fused kernels of include/genaccel/attention/block_sparse_bwd.cuh), the linear branch, until it
is fused too, batched GEMMs: the gradients of
O^l_i = phi(Q_i) H_i / (phi(Q_i) . Z_i) with H_i = sum_j M_ij h_j as GEMMs over the marginal mask M
(the same scheme as the CUDA forward: every query head of a kv head in one GEMM, so the scatter
dh_j = sum_i M_ij dH_i also sums over the heads sharing h_j), then the gradient through phi.
The linear branch is float32 (TF32 only where the user enabled it for matmuls); its per-block sums are
materialised for chunks of (batch, kv head) pairs that bound the temporaries.

Device-generic torch code, registered for CUDA; the tests run it on CPU tensors (where the sparse
branch is the CPU kernel) against the CPU op."""

import torch

from ..block_sparse import token_blocks
from .reference import feature_map

# Bytes of float32 per-block sums (h, H_i, dH_i, dh) per chunk of (batch, kv head) pairs.
_CHUNK_BYTES = 1 << 30


def _phi_vjp(x: torch.Tensor, phi: torch.Tensor, grad: torch.Tensor, name: str) -> torch.Tensor:
    """J_phi(x)^T grad for SLA's feature maps (phi = feature_map(x, name))."""
    if name == "softmax":
        return phi * (grad - (grad * phi).sum(-1, keepdim=True))
    if name == "elu":  # d(elu + 1)/dx = 1 for x > 0, exp(x) = phi otherwise
        return grad * torch.where(x > 0, torch.ones_like(phi), phi)
    return grad * (x > 0)


def _linear_branch_grads(grad, phi_q, phi_k, v, out, denom, marginal, group, block_q, block_k):
    """(d_phi_q, d_phi_k, dv) of the linear branch for C (batch, kv head) pairs: grad, phi_q, out
    (C, G*Nq, D), denom (C, G*Nq), phi_k, v (C, Nk, D), marginal (C, G*Tq, Tk) bool; float32. The
    big products, the sums over the mask of D x D blocks, go through op sla_mask_matmul (on CUDA
    bf16 tensor cores at float32 accuracy)."""
    C, nk, D = phi_k.shape
    nq = phi_q.shape[1] // group
    tq, tk = marginal.shape[1] // group, marginal.shape[2]
    kb, vb = token_blocks(phi_k, block_k), token_blocks(v, block_k)                       # (C, Tk, bk, D)
    h = (kb.transpose(-1, -2) @ vb).view(C, tk, D * D)
    z = kb.sum(2)                                                                # (C, Tk, D)
    Hi = torch.ops.genaccel.sla_mask_matmul(marginal, h).view(C, group * tq, D, D)
    Zi = marginal.float() @ z                                                    # (C, G*Tq, D)
    seen = denom > 0
    inv = torch.where(seen, 1.0 / torch.where(seen, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    dout = grad * seen.unsqueeze(-1)
    d_l = (dout * out).sum(-1, keepdim=True)                                      # D^l per row

    def qblocks(x):  # (C, G*Nq, E) -> (C, G*Tq, bq, E)
        return token_blocks(x.reshape(C * group, nq, -1), block_q).reshape(C, group * tq, block_q, -1)

    dob, dlb, invb = qblocks(dout), qblocks(d_l), qblocks(inv.unsqueeze(-1))
    qtb = qblocks(phi_q) * invb                                                   # phi(q) / denom
    d_phi_q = (dob @ Hi.transpose(-1, -2) - dlb * Zi.unsqueeze(-2)) * invb
    d_phi_q = d_phi_q.reshape(C * group, tq * block_q, D)[:, :nq].reshape(C, group * nq, D)
    dHi = (qtb.transpose(-1, -2) @ dob).view(C, group * tq, D * D)
    dZi = -(qtb * dlb).sum(2)                                                     # (C, G*Tq, D)
    mt = marginal.transpose(1, 2)                                                 # (C, Tk, G*Tq)
    dh = torch.ops.genaccel.sla_mask_matmul(mt, dHi).view(C, tk, D, D)
    dz = mt.float() @ dZi                                                         # (C, Tk, D)
    d_phi_k = (vb @ dh.transpose(-1, -2) + dz.unsqueeze(2)).flatten(1, 2)[:, :nk]
    dv = (kb @ dh).flatten(1, 2)[:, :nk]
    return d_phi_q, d_phi_k, dv


def sla_bwd_gemm(grad_sparse, grad_linear, q, k, v, codes, kv_indices, kv_counts, out_sparse, lse, delta,
                 out_linear, denom, block_q, block_k, scale, feature_map_name, linear_over_all_keys):
    """(dq, dk, dv) of sla_fwd, in the dtypes of q, k, v (see the op's schema)."""
    torch.ops.genaccel.check_sla_bwd_inputs(
        grad_sparse, grad_linear, q, k, v, codes, kv_indices, kv_counts, out_sparse, lse, delta, out_linear, denom,
        block_q, block_k, scale, feature_map_name, linear_over_all_keys)
    dq, dk, dv = (g.float() for g in torch.ops.genaccel.block_sparse_attn_bwd(
        grad_sparse, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale))
    B, H, nq, D = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if q.numel() and k.numel():
        group = H // hkv
        tq, tk = kv_indices.shape[2], codes.shape[3]
        marginal = torch.ones_like(codes, dtype=torch.bool) if linear_over_all_keys else codes == 0
        marginal = marginal.expand(B, H, tq, tk).reshape(B * hkv, group * tq, tk)
        qf, kf = q.float().reshape(B * hkv, group * nq, D), k.float().reshape(B * hkv, nk, D)
        phi_q, phi_k = feature_map(qf, feature_map_name), feature_map(kf, feature_map_name)
        rest = [t.float().reshape(B * hkv, group * nq, -1) for t in (grad_linear, out_linear, denom.unsqueeze(-1))]
        vf = v.float().reshape(B * hkv, nk, D)
        dq_l, dk_l, dv_l = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
        # float32 h, dh, H_i, dH_i plus the bf16 parts of h or dH_i (1.5x) inside sla_mask_matmul.
        step = max(1, _CHUNK_BYTES // (4 * D * D * (3 * tk + 4 * group * tq)))
        for c0 in range(0, B * hkv, step):
            s = slice(c0, c0 + step)
            d_phi_q, d_phi_k, dv_l[s] = _linear_branch_grads(
                rest[0][s], phi_q[s], phi_k[s], vf[s], rest[1][s], rest[2][s].squeeze(-1), marginal[s],
                group, block_q, block_k)
            dq_l[s] = _phi_vjp(qf[s], phi_q[s], d_phi_q, feature_map_name)
            dk_l[s] = _phi_vjp(kf[s], phi_k[s], d_phi_k, feature_map_name)
        dq = dq + dq_l.view(B, H, nq, D)
        dk = dk + dk_l.view(B, hkv, nk, D)
        dv = dv + dv_l.view(B, hkv, nk, D)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


torch.library.register_kernel("genaccel::sla_bwd", "cuda", sla_bwd_gemm)
