"""Readable float64 specification of SLA, sparse-linear attention (arXiv 2509.24006), in the
paper's semantics; never used in the fast path.

Per query block i, the key blocks j are classified by `sla_block_map_reference` into critical (1),
marginal (0) and negligible (-1). Then

    O   = O^s + Proj(O^l)
    O^s = softmax attention over the tokens of the critical blocks only
    O^l = phi(Q_i) H_i / (phi(Q_i) Z_i),  H_i = sum_{j marginal} phi(K_j)^T V_j,  Z_i = sum colsum phi(K_j)

phi is applied per token over the feature dim (softmax, elu+1 or relu); Proj is an nn.Linear(D, D)
shared by all heads. A row with no marginal key (or a zero denominator) gets O^l = 0.
`linear_over_all_keys=True` is the original repository's main-branch variant: O^l is linear
attention over every key (critical and negligible included) with 1e-5 added to the denominator.
Everything is differentiable, so autograd on these functions is the gradient reference.
"""

import math

import torch

from ..block_sparse.reference import expand_block_mask, masked_matmul
from .spec import ALL_KEYS_EPS, FEATURE_MAPS, block_counts  # noqa: F401  (re-exported for the tests)

CRITICAL, MARGINAL, NEGLIGIBLE = 1, 0, -1
def feature_map(x: torch.Tensor, name: str) -> torch.Tensor:
    """phi of SLA's linear branch, per token over the last (feature) dim."""
    if name == "softmax":
        return torch.softmax(x, dim=-1)
    if name == "elu":
        return torch.nn.functional.elu(x) + 1.0
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")


def pooled_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over the tokens of each block along dim -2 (a partial last block divides by its size)."""
    n = x.shape[-2]
    return torch.stack([x[..., s : s + block, :].mean(dim=-2) for s in range(0, n, block)], dim=-2)


def sla_block_map_reference(q, k, topk=0.05, low_k=0.10, block_size=(64, 64)):
    """int8 codes (B, H, Tq, Tk): 1 critical, 0 marginal, -1 negligible, from float64 scores
    mean_pool(q) . mean_pool(k - mean_tokens(k)). Ties go to the lower block index."""
    bq, bk = block_size
    q, k = q.double(), k.double()
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    scores = pooled_blocks(q, bq) @ pooled_blocks(k - k.mean(dim=-2, keepdim=True), bk).transpose(-1, -2)
    return select_blocks_reference(scores, *block_counts(scores.shape[-1], topk, low_k))


def select_blocks_reference(scores, n_crit, n_neg):
    """int8 codes of scores (..., Tk): per row the n_crit highest critical, the n_neg lowest
    negligible, by a stable descending sort (ties to the lower block index, -0.0 == 0.0, NaN last);
    the specification of op sla_select_blocks."""
    codes = torch.zeros(scores.shape, dtype=torch.int8)
    order = torch.sort(-scores, dim=-1, stable=True).indices  # descending, lower index first on ties
    codes.scatter_(-1, order[..., :n_crit], CRITICAL)
    if n_neg:
        codes.scatter_(-1, order[..., scores.shape[-1] - n_neg :], NEGLIGIBLE)
    return codes


def sparse_linear_attention_reference(
    q,
    k,
    v,
    codes,
    proj_weight=None,
    proj_bias=None,
    block_size=(64, 64),
    feature_map_name="softmax",
    linear_over_all_keys=False,
    scale=None,
):
    """Returns (out, out_sparse, out_linear) in float64, all (B, H, Nq, D); out includes Proj."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, nq, D = q.shape
    nk = k.shape[2]
    group = H // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    tokens = expand_block_mask(codes, nq, nk, block_size).expand(B, H, nq, nk)

    critical = tokens == CRITICAL
    logits = (q @ k.transpose(-1, -2) * scale).masked_fill(~critical, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = torch.exp(logits - lse.clamp_min(torch.finfo(torch.float64).min))
    out_sparse = masked_matmul(probs, critical, v)

    fq, fk = feature_map(q, feature_map_name), feature_map(k, feature_map_name)
    if linear_over_all_keys:
        weights = fq @ fk.transpose(-1, -2)
        out_linear = (weights @ v) / (weights.sum(dim=-1, keepdim=True) + ALL_KEYS_EPS)
    else:
        marginal = tokens == MARGINAL
        weights = (fq @ fk.transpose(-1, -2)).masked_fill(~marginal, 0.0)
        denom = weights.sum(dim=-1, keepdim=True)
        # denom = 0 (no marginal block, or relu features that never meet) gives 0; a NaN stays NaN.
        safe = torch.where(denom == 0, torch.ones_like(denom), denom)
        out_linear = torch.where(denom == 0, torch.zeros_like(out_sparse), masked_matmul(weights, marginal, v) / safe)

    projected = out_linear
    if proj_weight is not None:
        projected = torch.nn.functional.linear(
            out_linear, proj_weight.double(), None if proj_bias is None else proj_bias.double()
        )
    return out_sparse + projected, out_sparse, out_linear


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """(..., N, D) -> (..., T, block, D), zero padded to whole blocks."""
    n = x.shape[-2]
    t = -(-n // block)
    return torch.nn.functional.pad(x, (0, 0, 0, t * block - n)).unflatten(-2, (t, block))


def linear_branch_backward_reference(grad_linear, phi_q, phi_k, v, codes, out_linear, denom, block_size=(64, 64),
                                     linear_over_all_keys=False):
    """Gradients (d_phi_q, d_phi_k, dv) of the linear branch O^l = phi_q H_i / denom in float64 by
    the paper's formulas (section 1.5 / Alg. 2), from the forward's out_linear and denom, with dense
    block sums (O(Tq * Tk * D^2) work): what op sla_bwd's linear-branch kernel computes. With
    dO = grad_linear on rows whose denom > 0 (the others had O^l = 0), inv = 1/denom,
    D^l = rowsum(dO * O^l) and q~ = phi_q * inv:
        d_phi_q = (dO H_i^T - D^l Z_i^T) * inv,    dH_i = q~^T dO,    dZ_i = -sum_rows q~ D^l
        dh_j = sum_{i: j marginal for i} dH_i (over the query heads of kv head too), dz_j likewise
        d_phi_k_j = V_j dh_j^T + 1 dz_j^T,         dv_j = phi_k_j dh_j
    """
    bq, bk = block_size
    B, H, nq, D = phi_q.shape
    hkv, nk = phi_k.shape[1], phi_k.shape[2]
    group = H // hkv
    fq, fk, vv = phi_q.double(), phi_k.double(), v.double()
    kb, vb = _blocks(fk, bk), _blocks(vv, bk)                              # (B, Hkv, Tk, bk, D)
    h = (kb.transpose(-1, -2) @ vb).repeat_interleave(group, dim=1)        # (B, H, Tk, D, D)
    z = kb.sum(dim=-2).repeat_interleave(group, dim=1)                     # (B, H, Tk, D)
    tq, tk = -(-nq // bq), h.shape[2]
    marginal = (codes == MARGINAL).double().expand(B, H, tq, tk)
    if linear_over_all_keys:
        marginal = torch.ones_like(marginal)
    Hi = torch.einsum("bhij,bhjde->bhide", marginal, h)                   # (B, H, Tq, D, D)
    Zi = torch.einsum("bhij,bhjd->bhid", marginal, z)                     # (B, H, Tq, D)

    den = denom.double()
    seen = den > 0
    inv = torch.where(seen, 1.0 / torch.where(seen, den, torch.ones_like(den)), torch.zeros_like(den))
    dout = torch.where(seen.unsqueeze(-1), grad_linear.double(), torch.zeros((), dtype=torch.float64))
    d_l = (dout * out_linear.double()).sum(-1, keepdim=True)              # D^l, (B, H, Nq, 1)
    q_tilde = fq * inv.unsqueeze(-1)
    dob, qtb, dlb = _blocks(dout, bq), _blocks(q_tilde, bq), _blocks(d_l, bq)
    inv_b = _blocks(inv.unsqueeze(-1), bq)
    d_phi_q = ((dob @ Hi.transpose(-1, -2) - dlb * Zi.unsqueeze(-2)) * inv_b).flatten(2, 3)[:, :, :nq]
    dHi = qtb.transpose(-1, -2) @ dob                                      # (B, H, Tq, D, D)
    dZi = -(qtb * dlb).sum(dim=-2)                                         # (B, H, Tq, D)
    dh = torch.einsum("bhij,bhide->bhjde", marginal, dHi).unflatten(1, (hkv, group)).sum(2)
    dz = torch.einsum("bhij,bhid->bhjd", marginal, dZi).unflatten(1, (hkv, group)).sum(2)
    d_phi_k = (vb @ dh.transpose(-1, -2) + dz.unsqueeze(-2)).flatten(2, 3)[:, :, :nk]
    dv = (kb @ dh).flatten(2, 3)[:, :, :nk]
    return d_phi_q, d_phi_k, dv
