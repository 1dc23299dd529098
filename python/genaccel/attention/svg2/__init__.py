"""SVG2 (Sparse VideoGen2): k-means over the tokens of every (batch, head) and the cluster permutation
that makes every cluster one contiguous segment."""

from .ops import cluster_offsets, cluster_permute, cluster_unpermute, kmeans, permute_rows, random_init

__all__ = ["cluster_offsets", "cluster_permute", "cluster_unpermute", "kmeans", "permute_rows", "random_init"]
