"""XQuantCache on tiny random Llama models (float32, CPU): every mode at 16 bits gives the plain model's
logits (prefill, decode steps, greedy generate, a left-padded batch), the memory counter matches the
byte arithmetic, quantized modes stay close, the SVD factors are exact and reload."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

from genaccel.kvcache import XQuantCache, enable_xquant  # noqa: E402

MODES = ["fp16_kv", "kivi", "xquant", "xquant_cl", "xquant_gqa"]


def tiny_llama(hidden=64, layers=3, heads=4, kv_heads=4, seed=0, bias=False):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=101, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      attention_bias=bias, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers initialises biases to 0, which would hide a dropped bias term
        for layer in model.model.layers if bias else []:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


def ids(batch, length, seed=1):
    return torch.randint(0, 101, (batch, length), generator=torch.Generator().manual_seed(seed))


def decode_logits(model, cache, tokens, prefill):
    """Logits of every position: a prefill of `prefill` tokens, then one token per step."""
    with torch.no_grad():
        out = [model(tokens[:, :prefill], cache=cache, use_cache=True).logits]
        for t in range(prefill, tokens.shape[1]):
            out.append(model(tokens[:, t:t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kv_heads, bias", [(4, False), (2, True)])
def test_16_bits_equals_the_plain_model(mode, kv_heads, bias):
    model = tiny_llama(kv_heads=kv_heads, bias=bias)
    tokens = ids(2, 40)
    with torch.no_grad():
        want = model(tokens).logits
    options = dict(group_size=16, residual_length=8)
    got = decode_logits(model, XQuantCache(model, mode=mode, bits=16, **options), tokens, prefill=17)
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["xquant", "xquant_cl"])
def test_options_at_16_bits(mode):
    # The documented variants: per-channel X groups, the pre-norm residual as CL's delta input.
    model = tiny_llama()
    tokens = ids(1, 30)
    with torch.no_grad():
        want = model(tokens).logits
    option = dict(axis="channel") if mode == "xquant" else dict(cl_input="pre_norm", cl_base_layers=2)
    got = decode_logits(model, XQuantCache(model, mode=mode, bits=16, group_size=8, **option), tokens, prefill=5)
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generate_matches(mode):
    model = tiny_llama(kv_heads=2)
    prompt = ids(1, 12)
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=10, do_sample=False)
        got = model.generate(prompt, max_new_tokens=10, do_sample=False,
                             cache=enable_xquant(model, mode, bits=16, group_size=8))
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["xquant", "xquant_cl", "xquant_gqa"])
def test_left_padded_batch_keeps_positions(mode):
    # Rows of different lengths, left padded: positions are not 0..L-1, so the cache stores them.
    model = tiny_llama(kv_heads=2)
    tokens = ids(2, 14)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :5] = 0
    with torch.no_grad():
        want = model.generate(tokens, attention_mask=mask, max_new_tokens=6, do_sample=False)
        cache = XQuantCache(model, mode=mode, bits=16, group_size=8)
        got = model.generate(tokens, attention_mask=mask, max_new_tokens=6, do_sample=False, cache=cache)
    assert torch.equal(got, want)
    assert cache.memory_report()["positions_bytes"] > 0


def test_memory_report_mha_4_bits_is_7_70x():
    # hidden 256 = 2 groups of 128: per token per layer 128 bytes of codes + 2 fp16 scales + 2 4-bit
    # zero points (1 byte) = 133 bytes against fp16 K + V = 2 x 256 x 2 = 1024 bytes.
    model = tiny_llama(hidden=256, layers=2, heads=4, kv_heads=4)
    cache = XQuantCache(model, mode="xquant", bits=4, group_size=128)
    decode_logits(model, cache, ids(1, 20), prefill=16)
    report = cache.memory_report()
    assert report["tokens"] == 20 and report["positions_bytes"] == 0
    assert report["bytes"] == 2 * 20 * 133
    assert round(report["ratio"], 2) == 7.70
    assert all(layer["bytes_per_token"] == 133 for layer in report["layers"])


@pytest.mark.parametrize("mode, bits, limit", [("xquant", 8, 0.02), ("xquant", 4, 0.3), ("kivi", 4, 0.3),
                                               ("xquant_cl", 4, 0.3), ("xquant_gqa", 4, 0.3)])
def test_quantized_modes_stay_close(mode, bits, limit):
    model = tiny_llama(kv_heads=2)
    tokens = ids(1, 60)
    with torch.no_grad():
        want = model(tokens).logits
    got = decode_logits(model, XQuantCache(model, mode=mode, bits=bits, group_size=16, residual_length=16), tokens,
                        prefill=20)
    err = ((got - want).norm() / want.norm()).item()
    assert math.isfinite(err) and err < limit, err
    assert err > 0  # quantization happened


def test_svd_factors_are_exact_and_reload(tmp_path):
    model = tiny_llama(kv_heads=2)
    path = str(tmp_path / "svd.safetensors")
    first = XQuantCache(model, mode="xquant_gqa", bits=16, svd_path=path)
    again = XQuantCache(model, mode="xquant_gqa", bits=16, svd_path=path)
    for f, g, layer in zip(first.svd, again.svd, model.model.layers):
        for name in f:
            assert torch.equal(f[name], g[name])
        w = layer.self_attn.k_proj.weight
        x = torch.randn(7, w.shape[1])
        assert torch.allclose((x @ f["k_u"]) @ f["k_w"].T, x @ w.T, atol=1e-5)


def test_bad_options_are_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="mode"):
        XQuantCache(model, mode="kv8")
    with pytest.raises(ValueError, match="bits"):
        XQuantCache(model, bits=5)
    with pytest.raises(ValueError, match="bits must be 16"):
        XQuantCache(model, mode="fp16_kv", bits=4)
    with pytest.raises(ValueError, match="group_size"):
        XQuantCache(model, group_size=12)
    with pytest.raises(ValueError, match="axis"):
        XQuantCache(model, axis="rows")
    with pytest.raises(ValueError, match="decoder layers"):
        XQuantCache(torch.nn.Linear(2, 2))


def test_other_caches_are_untouched():
    # The hooks act only for an XQuantCache: a DynamicCache run on a hooked model is the plain one.
    model = tiny_llama()
    XQuantCache(model)
    tokens = ids(1, 20)
    with torch.no_grad():
        want = model(tokens).logits
    got = decode_logits(model, DynamicCache(config=model.config), tokens, prefill=10)
    assert (got - want).abs().max() < 1e-4


def test_float16_storage_of_a_float32_model():
    # dtype=float16: the fp16 KV baseline stores exactly the fp16 K / V bytes (ratio 1), and the logits
    # move only by float16 rounding.
    model = tiny_llama(kv_heads=2)
    tokens = ids(1, 30)
    with torch.no_grad():
        want = model(tokens).logits
    for mode in MODES:
        cache = XQuantCache(model, mode=mode, bits=16, group_size=8, dtype=torch.float16)
        got = decode_logits(model, cache, tokens, prefill=10)
        assert got.dtype == torch.float32 and (got - want).abs().max() < 1e-2, mode
        if mode == "fp16_kv":
            assert cache.memory_report()["ratio"] == 1.0


@pytest.mark.parametrize("mode, kv_heads, bias", [("xquant", 4, False), ("xquant", 2, True), ("xquant_gqa", 2, True)])
def test_absorbed_values_equal_rematerialised_values(mode, kv_heads, bias):
    # At 16 bits the absorbed path is the plain model; at 4 bits it equals the rematerialising cache
    # (the same stored bytes: only the order of the products differs).
    model = tiny_llama(kv_heads=kv_heads, bias=bias)
    tokens = ids(2, 36)
    with torch.no_grad():
        want = model(tokens).logits
    got = decode_logits(model, XQuantCache(model, mode=mode, bits=16, absorbed_values=True), tokens, prefill=9)
    assert (got - want).abs().max() < 1e-4
    remat = decode_logits(model, XQuantCache(model, mode=mode, bits=4, group_size=16), tokens, prefill=9)
    absorbed = decode_logits(model, XQuantCache(model, mode=mode, bits=4, group_size=16, absorbed_values=True),
                             tokens, prefill=9)
    assert (absorbed - remat).abs().max() < 1e-4 and (absorbed - want).abs().max() > 1e-3


def test_absorbed_values_with_left_padding_and_generate():
    model = tiny_llama(kv_heads=2)
    tokens = ids(2, 14)
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[0, :4] = 0
    with torch.no_grad():
        want = model.generate(tokens, attention_mask=mask, max_new_tokens=6, do_sample=False)
        cache = XQuantCache(model, mode="xquant", bits=16, group_size=8, absorbed_values=True)
        got = model.generate(tokens, attention_mask=mask, max_new_tokens=6, do_sample=False, cache=cache)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="absorbed_values"):
        XQuantCache(model, mode="kivi", absorbed_values=True)


@pytest.mark.parametrize("cl_input", ["post_norm", "pre_norm"])
def test_cl_deltas_are_closed_loop_no_error_growth_with_depth(cl_input):
    # Brief A8.3: the accumulator A_i = A_{i-1} + deq(Q(X_i - A_{i-1})) is within half a scale of the
    # layer's own delta groups at every depth; open-loop deltas Q(X_i - X_{i-1}) add their errors up.
    import genaccel

    model = tiny_llama(layers=8)
    seen = {}

    def grab(i):
        return lambda _m, args, kwargs: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).detach())

    handles = [(layer.self_attn if cl_input == "post_norm" else layer).register_forward_pre_hook(grab(i), with_kwargs=True)
               for i, layer in enumerate(model.model.layers)]
    cache = XQuantCache(model, mode="xquant_cl", bits=2, group_size=16, cl_input=cl_input)
    with torch.no_grad():
        model(ids(2, 24), cache=cache, use_cache=True)
    for h in handles:
        h.remove()
    xs = [seen[i] for i in range(8)]
    acc, closed = None, []
    for i, layer in enumerate(cache.layers):
        store = layer.stores["d"]
        acc = store.values(torch.float32) if acc is None else acc + store.values(torch.float32)
        err = (acc - xs[i]).abs().unflatten(-1, (-1, 16))
        half = store.data.scales.float().unsqueeze(-1) / 2
        assert (err <= half * (1 + 1e-3) + 1e-5).all(), f"layer {i}: beyond half its delta's scale"
        closed.append((acc - xs[i]).pow(2).mean().sqrt().item())
    deq = lambda t: genaccel.dequantize(genaccel.quantize(t, 2, 16))  # noqa: E731
    opened = deq(xs[0])
    for i in range(1, 8):
        opened = opened + deq(xs[i] - xs[i - 1])
    open_last = (opened - xs[7]).pow(2).mean().sqrt().item()
    assert open_last > 1.5 * closed[7], (open_last, closed)
