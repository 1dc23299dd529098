"""The package and how its binary was built: version, build_info(), has_cuda_kernels()."""

import importlib.metadata
import re

import pytest
import torch

import genaccel

BUILD_INFO_TYPES = {"version": str, "torch_version": str, "cuda": bool, "cuda_archs": str, "cpu_capability": str}


def test_version_matches_build_info_and_metadata():
    info = genaccel.build_info()
    assert isinstance(genaccel.__version__, str) and genaccel.__version__
    assert genaccel.__version__ == info["version"]
    # The installed distribution (pyproject.toml) and the compiled binary agree: no stale .so.
    assert importlib.metadata.version("genaccel") == info["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([.+-]?\w+)*", info["version"]), info["version"]


def test_build_info_keys_and_types():
    info = genaccel.build_info()
    assert isinstance(info, dict)
    assert set(info) == set(BUILD_INFO_TYPES), sorted(info)
    for key, typ in BUILD_INFO_TYPES.items():
        assert type(info[key]) is typ, f"build_info()[{key!r}] is {type(info[key]).__name__}, expected {typ.__name__}"
    assert info["cpu_capability"], "cpu_capability must name an ISA (DEFAULT when none)"
    assert re.fullmatch(r"[A-Z0-9_]+", info["cpu_capability"]), info["cpu_capability"]
    if info["cuda"]:
        assert re.fullmatch(r"\d+[a-z]?(-(real|virtual))?(,\d+[a-z]?(-(real|virtual))?)*", info["cuda_archs"]), info["cuda_archs"]
    else:
        assert info["cuda_archs"] == ""
    # A fresh dict each call: callers may mutate what they get.
    info["version"] = "mutated"
    assert genaccel.build_info()["version"] != "mutated"


def test_build_info_torch_version_is_the_running_torch():
    assert genaccel.build_info()["torch_version"] == torch.__version__


def test_has_cuda_kernels_agrees_with_build_info():
    assert isinstance(genaccel.has_cuda_kernels(), bool)
    assert genaccel.has_cuda_kernels() == genaccel.build_info()["cuda"]
    assert genaccel.has_cuda_kernels("block_sparse_attn_fwd") == genaccel.build_info()["cuda"]


def test_cpu_kernel_is_registered():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("genaccel::block_sparse_attn_fwd", "CPU")
    schema = str(torch.ops.genaccel.block_sparse_attn_fwd.default._schema)
    assert schema.startswith("genaccel::block_sparse_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor kv_indices, Tensor kv_counts")
    assert "-> (Tensor out, Tensor lse)" in schema


def test_public_api():
    assert sorted(genaccel.__all__) == sorted(
        ["QuantizedTensor", "__version__", "block_mask_to_indices", "block_sparse_attention", "build_info", "channel_to_space", "chunk_causal_conv3d", "cluster_permute",
         "cluster_unpermute", "dequantize", "has_cuda_kernels", "kmeans", "mask_density", "quantize", "radial_block_mask", "sla_block_map", "space_to_channel",
         "sparse_linear_attention", "svg2_attention", "xquant_matmul", "xquant_weighted_sum"]
    )
    for name in genaccel.__all__:
        assert hasattr(genaccel, name), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_build_matches_device():
    """On a machine with a GPU, the CUDA kernels are compiled for an arch this device can run."""
    info = genaccel.build_info()
    assert info["cuda"], "a GPU is present but genaccel was built without CUDA"
    major, minor = torch.cuda.get_device_capability()
    archs = [re.match(r"(\d+)", a).group(1) for a in info["cuda_archs"].split(",")]
    assert any(int(a) // 10 == major and int(a) % 10 <= minor for a in archs), (info["cuda_archs"], (major, minor))
