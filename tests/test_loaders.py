"""Every loader yields the same model: one random transformers LLaMA written as HF
safetensors, HF .bin, Meta .pth (one and two shards), TencentPretrain .bin and GGUF."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import checkpoints as ck  # noqa: E402

import linly_engine as le  # noqa: E402

IDS = [3, 17, 42, 99, 7, 150, 201, 11]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-5, initializer_range=0.15, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(root / "hf", safe_serialization=True)
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].numpy()
    return model, root, want


def engine_logits(path) -> np.ndarray:
    return le.Model.load(path, quant="f32", kv_cache="f32").prefill(IDS, all_logits=True)


def check(got, want):
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_hf_safetensors(source):
    _, root, want = source
    check(engine_logits(root / "hf"), want)


def test_hf_sharded_safetensors_with_index(source):
    model, root, want = source
    model.save_pretrained(root / "hf_sharded", safe_serialization=True, max_shard_size="40KB")
    assert (root / "hf_sharded" / "model.safetensors.index.json").is_file()
    assert len(list((root / "hf_sharded").glob("model-*.safetensors"))) > 1
    check(engine_logits(root / "hf_sharded"), want)


def test_hf_bin(source):
    model, root, want = source
    check(engine_logits(ck.write_torch_bin_folder(model, root / "hf_bin")), want)


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_pth(source, shards):
    model, root, want = source
    check(engine_logits(ck.write_meta_folder(model, root / f"meta{shards}", shards)), want)


def test_tencentpretrain_bin(source):
    model, root, want = source
    check(engine_logits(ck.write_tencentpretrain(model, root / "tp")), want)


def test_gguf_f32(source):
    model, root, want = source
    check(engine_logits(ck.write_gguf(model, root / "m.gguf")), want)


def test_gguf_q8_0_used_as_stored(source):
    model, root, want = source
    path = ck.write_gguf(model, root / "m_q8.gguf", "Q8_0")
    m = le.Model.load(path)
    assert m.info()["matrix_formats"] == {"q8_0": 16}
    got = m.prefill(IDS, all_logits=True)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # q8_0 weight rounding only


@pytest.mark.parametrize("qtype,block_bytes,scale_offsets", [("Q4_K", 144, (0, 2)), ("Q5_K", 176, (0, 2)),
                                                             ("Q6_K", 210, (208,))])
def test_gguf_k_quants_are_converted_to_q8_0(tmp_path, qtype, block_bytes, scale_offsets):
    """K-quant blocks (random codes, sane f16 scales) load as q8_0 matching gguf-py's
    dequantisation to within q8_0's rounding."""
    import gguf

    from linly_engine.formats.gguf import load_gguf

    rng = np.random.default_rng(0)
    n, k = 16, 512
    raw = rng.integers(0, 256, (n, k // 256 * block_bytes), dtype=np.uint8)
    blocks = raw.reshape(n, -1, block_bytes)
    for off in scale_offsets:  # d (and dmin): 2^-10, so no Inf/NaN from random bits
        blocks[:, :, off:off + 2] = np.frombuffer(np.float16(2.0**-10).tobytes(), np.uint8)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_embedding_length(k); w.add_block_count(1); w.add_feed_forward_length(n); w.add_head_count(4)
    w.add_context_length(64); w.add_vocab_size(32)
    w.add_tensor("blk.0.ffn_gate.weight", raw, raw_shape=raw.shape, raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    t = load_gguf(tmp_path / "k.gguf").tensors["model.layers.0.mlp.gate_proj.weight"]
    assert t.fmt == "q8_0" and t.shape == (n, k)
    want = gguf.quants.dequantize(raw, qt).reshape(n, k)
    amax = np.abs(want.reshape(n, -1, 32)).max(-1, keepdims=True)
    err = np.abs(t.to_f32().reshape(n, -1, 32) - want.reshape(n, -1, 32))
    # the q8_0 step is searched up to amax/80 and codes round against the stored step:
    # half a step, its f16 rounding and float slack well inside 2^-8
    assert np.all(err <= amax / 160 * (1 + 2.0**-8) + 1e-9)
