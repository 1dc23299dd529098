"""SVG2 (Sparse VideoGen2, arXiv 2505.18875): k-means over the tokens of every (batch, head), the
cluster permutation that makes every cluster one contiguous segment, the top-p cluster-pair selection
and variable-block sparse attention over the permuted tokens."""

from .module import SVG2Attention, svg2_attention
from .ops import cluster_offsets, cluster_permute, cluster_unpermute, kmeans, permute_rows, random_init
from .select import critical_cluster_pairs, pair_density

__all__ = ["SVG2Attention", "cluster_offsets", "cluster_permute", "cluster_unpermute", "critical_cluster_pairs",
           "kmeans", "pair_density", "permute_rows", "random_init", "svg2_attention"]
