"""GPTQ and AWQ checkpoints import bit-exactly into the group-wise 4-bit format.

The packing below follows the reference packers (AutoGPTQ's ``pack``: codes along K,
zeros along N stored minus one; AutoAWQ's GEMM ``pack``: both along N in the order
0, 2, 4, 6, 1, 3, 5, 7), written independently of the engine's unpacking, and the
expected weights come from the reference dequantisation formula. A whole HF folder with
``quantization_config`` must then give transformers' logits for the dequantised model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import linly_engine as le
from linly_engine import _C
from linly_engine.formats.gptq_awq import QuantizedCheckpointError, import_layer

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def random_layer(rng, n, k, group):
    codes = rng.integers(0, 16, size=(k, n))              # [K, N] as the checkpoints index them
    zeros = rng.integers(1, 16, size=(k // group, n))     # v1 stores zero - 1, so zero >= 1 here
    scales = (rng.random((k // group, n)) * 0.02 + 0.001).astype(np.float16)
    return codes, zeros, scales


def pack_gptq(codes, zeros):
    """AutoGPTQ: qweight [K/8, N] (row i, nibble j = code of input 8i + j); qzeros
    [K/g, N/8] with the zero minus one (column c, nibble j = output 8c + j)."""
    k, n = codes.shape
    qweight = np.zeros((k // 8, n), np.uint32)
    for i in range(k // 8):
        for j in range(8):
            qweight[i] |= codes[8 * i + j].astype(np.uint32) << (4 * j)
    stored = (zeros - 1).astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], n // 8), np.uint32)
    for c in range(n // 8):
        for j in range(8):
            qzeros[:, c] |= stored[:, 8 * c + j] << (4 * j)
    return qweight.view(np.int32), qzeros.view(np.int32)


def pack_awq(codes, zeros):
    def pack(a):
        out = np.zeros((a.shape[0], a.shape[1] // 8), np.uint32)
        for c in range(a.shape[1] // 8):
            for i in range(8):
                out[:, c] |= a[:, 8 * c + ORDER_MAP[i]].astype(np.uint32) << (4 * i)
        return out.view(np.int32)
    return pack(codes), pack(zeros)


def reference_weight(codes, zeros, scales, group):
    """W [N, K] = scale[g(k), n] · (code[k, n] − zero[g(k), n]), g(k) = k // group."""
    g = np.arange(codes.shape[0]) // group
    return (scales.astype(np.float32)[g] * (codes - zeros[g])).T


def engine_weight(t):
    return _C.dequantize(t.row_bytes(), t.fmt, t.shape[1]).reshape(t.shape)


@pytest.mark.parametrize("group", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("n,k", [(24, 256), (40, 512)])
def test_gptq_layer_is_bit_exact(rng, n, k, group):
    g = k if group == -1 else group
    if k % g:
        pytest.skip("group larger than K")
    codes, zeros, scales = random_layer(rng, n, k, g)
    qweight, qzeros = pack_gptq(codes, zeros)
    parts = {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": (np.arange(k) // g).astype(np.int32)}
    t = import_layer("gptq", parts, group, True, "layer")
    assert t.shape == (n, k) and t.fmt == f"q4_g{min(g, 128)}"
    np.testing.assert_array_equal(engine_weight(t), reference_weight(codes, zeros, scales, g))


@pytest.mark.parametrize("group", [32, 64, 128])
def test_awq_layer_is_bit_exact(rng, group):
    n, k = 48, 384
    codes, zeros, scales = random_layer(rng, n, k, group)
    zeros = zeros - 1  # AWQ stores the zero itself; any of 0..15
    qweight, qzeros = pack_awq(codes, zeros)
    t = import_layer("awq", {"qweight": qweight, "qzeros": qzeros, "scales": scales}, group, False, "layer")
    np.testing.assert_array_equal(engine_weight(t), reference_weight(codes, zeros, scales, group))


@pytest.mark.parametrize("threads_n", [1, 2])
def test_act_order_layer_runs_exactly(rng, threads, threads_n):
    """desc_act: g_idx scatters each group over the inputs (GPTQ's order of decreasing
    Hessian diagonal). W[n, k] = scale[g_idx[k], n] · (code[k, n] − zero[g_idx[k], n])."""
    le.set_num_threads(threads_n)
    n, k, group = 40, 256, 64
    codes, zeros, scales = random_layer(rng, n, k, group)
    perm = rng.permutation(k)                       # the act order
    g_idx = np.empty(k, np.int32)
    g_idx[perm] = np.arange(k) // group             # i-th quantised input belongs to group i // g
    qweight, qzeros = pack_gptq(codes, zeros)
    t = import_layer("gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}, group,
                     True, "layer")
    want = (scales.astype(np.float32)[g_idx] * (codes - zeros[g_idx])).T
    np.testing.assert_array_equal(t.to_f32(), want)
    from linly_engine.model import pack

    m = pack(t, None)
    x = rng.standard_normal((5, k)).astype(np.float32)
    np.testing.assert_allclose(m.matmul(x, precise=True), x @ want.T, rtol=2e-3, atol=2e-3 * np.abs(x @ want.T).max())
    bad = g_idx.copy()
    bad[0] = bad[1] = 0  # a group with too many members
    bad[np.flatnonzero(g_idx == 0)[-1]] = g_idx[1] if g_idx[1] != 0 else 1
    with pytest.raises(QuantizedCheckpointError, match="exactly"):
        import_layer("gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": bad}, group, True, "l")


def test_input_order_must_be_a_permutation(rng):
    m = le.PackedMatrix(_C.quantize(rng.standard_normal((4, 64)).astype(np.float32), "q4_g32"), "q4_g32", 64)
    with pytest.raises(ValueError, match="permutation"):
        m.set_input_order(np.zeros(64, np.int32))
    with pytest.raises(ValueError, match="entries"):
        m.set_input_order(np.arange(32, dtype=np.int32))


def test_bad_shapes_are_refused(rng):
    codes, zeros, scales = random_layer(rng, 16, 256, 128)
    qweight, qzeros = pack_gptq(codes, zeros)
    with pytest.raises(QuantizedCheckpointError, match="don't agree"):
        import_layer("gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales}, 64, True, "l")
    with pytest.raises(QuantizedCheckpointError, match="float16"):
        import_layer("gptq", {"qweight": qweight, "qzeros": qzeros, "scales": scales.astype(np.float32)}, 128,
                     True, "l")


@pytest.mark.parametrize("kind", ["gptq", "gptq-act-order", "awq"])
def test_quantized_hf_folder_matches_transformers(tmp_path, rng, kind):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=131, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    group = 64
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    out = {}
    for name, w in state.items():
        if name.endswith("_proj.weight"):
            n, k = w.shape
            codes, zeros, scales = random_layer(rng, n, k, group)
            prefix = name[:-len(".weight")]
            g_idx = np.arange(k, dtype=np.int32) // group
            if kind == "gptq-act-order":
                g_idx[rng.permutation(k)] = np.arange(k) // group
                out[f"{prefix}.g_idx"] = g_idx
            if kind == "awq":
                zeros = zeros - 1
                qweight, qzeros = pack_awq(codes, zeros)
            else:
                qweight, qzeros = pack_gptq(codes, zeros)
            out.update({f"{prefix}.qweight": qweight, f"{prefix}.qzeros": qzeros, f"{prefix}.scales": scales})
            state[name] = (scales.astype(np.float32)[g_idx] * (codes - zeros[g_idx])).T
        else:
            out[name] = w
    folder = tmp_path / kind
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").unlink()
    save_file(out, str(folder / "model.safetensors"))
    raw = json.loads((folder / "config.json").read_text())
    raw["quantization_config"] = ({"quant_method": "gptq", "bits": 4, "group_size": group,
                                   "desc_act": kind == "gptq-act-order", "sym": False} if kind != "awq" else
                                  {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm",
                                   "zero_point": True})
    (folder / "config.json").write_text(json.dumps(raw))
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    ids = [1, 5, 77, 30, 2, 99, 12]
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    m = le.Model.load(folder, kv_cache="f32")
    assert set(m.info()["matrix_formats"]) == {"q4_g64", "f32"}  # the quantised layers, the embedding/head
    got = m.prefill(ids, all_logits=True)
    # the engine quantises activations to int8 (+ residual) for integer formats
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()
    # and a packed file keeps the act order
    from linly_engine.formats.packed import verify, write_packed
    from linly_engine.model import load_checkpoint

    write_packed(load_checkpoint(folder), tmp_path / "m.linly", None)
    verify(tmp_path / "m.linly")
    again = le.Model.load(tmp_path / "m.linly", kv_cache="f32").prefill(ids, all_logits=True)
    np.testing.assert_array_equal(again, got)


def test_unsupported_variants_are_clear(tmp_path):
    from linly_engine.formats.gptq_awq import import_quantized

    with pytest.raises(QuantizedCheckpointError, match="3-bit"):
        import_quantized({}, {"quant_method": "gptq", "bits": 3}, "x")
    with pytest.raises(QuantizedCheckpointError, match="GEMV|gemv"):
        import_quantized({}, {"quant_method": "awq", "bits": 4, "version": "gemv"}, "x")
    with pytest.raises(QuantizedCheckpointError, match="not supported"):
        import_quantized({}, {"quant_method": "bitsandbytes"}, "x")
