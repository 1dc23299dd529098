"""The small rules of SLA that the float64 reference and the fast path both follow (one home each):
the feature maps' and precisions' names, how many blocks a fraction means, the all-keys denominator epsilon."""

import math

FEATURE_MAPS = ("softmax", "elu", "relu")
# The ops' `precision` argument: how the CUDA linear branch's GEMMs run (the CPU is float32 always).
PRECISIONS = ("tf32", "fp32")
# The original repository's main-branch denominator epsilon (linear_over_all_keys=True).
ALL_KEYS_EPS = 1e-5


def block_counts(n_blocks: int, topk: float, low_k: float):
    """Critical and negligible blocks per row: floor(topk * Tk) but at least one critical block,
    floor(low_k * Tk) negligible, never more than the blocks the critical ones leave."""
    if n_blocks == 0:
        return 0, 0
    # floor of the exact product: 0.29 * 100 is 28.999999999999996 in binary floating point, and a
    # user asking for 29 % of 100 blocks means 29 (the slack is far above that rounding error and
    # far below any real fraction's distance to the next integer).
    n_crit = min(n_blocks, max(1, math.floor(topk * n_blocks + 1e-9)))
    n_neg = min(n_blocks - n_crit, math.floor(low_k * n_blocks + 1e-9))
    return n_crit, n_neg
