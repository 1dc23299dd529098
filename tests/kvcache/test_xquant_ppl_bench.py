"""The xquant-ppl benchmark's decode loop: with an unquantized float32 cache its perplexity is the
one-forward perplexity of the same bytes, and a 2-bit X cache moves it (random tiny Llama, random bytes)."""

import pytest
import torch

pytest.importorskip("transformers")

from genaccel.benchmarks import xquant_ppl as P  # noqa: E402
from genaccel.kvcache import XQuantCache  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    cfg = P.PplConfig(hidden=64, layers=2, heads=2, kv_heads=2, context=48, prefill=8, windows=2, group_size=32)
    model = P.small_llama(cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads, cfg.context, seed=1).eval()
    tokens = torch.randint(0, 256, (cfg.windows, cfg.context), generator=torch.Generator().manual_seed(2))
    return cfg, model, tokens


def test_unquantized_cache_gives_the_no_cache_perplexity(setup):
    cfg, model, tokens = setup
    full = P.evaluate_without_cache(model, tokens, cfg)["ppl"]
    cached = P.evaluate(model, tokens, cfg, lambda: XQuantCache(model, mode="fp16_kv", bits=16))
    assert cached["ppl"] == pytest.approx(full, rel=1e-5)
    assert cached["ratio_vs_fp16_kv"] == pytest.approx(0.5)  # float32 storage: twice fp16's bytes
    assert cached["bytes_per_token_layer"] == 2 * 64 * 4


def test_quantized_cache_moves_the_perplexity(setup):
    cfg, model, tokens = setup
    full = P.evaluate_without_cache(model, tokens, cfg)["ppl"]
    x2 = P.evaluate(model, tokens, cfg, lambda: XQuantCache(model, mode="xquant", bits=2, group_size=32))
    assert x2["ppl"] != pytest.approx(full, rel=1e-5)
    assert x2["ratio_vs_fp16_kv"] > 10


def test_failures_flag_a_decode_loop_that_disagrees():
    rows = [dict(arch="MHA", mode="none", ppl=4.0), dict(arch="MHA", mode="fp16_kv", ppl=4.0 * (1 + 2 * P.FP16_TOL))]
    assert P.failures(rows) and not P.failures([dict(rows[1], ppl=4.0), rows[0]])
