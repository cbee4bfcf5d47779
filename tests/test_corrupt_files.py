"""Corrupt, truncated and mislabelled files of every kind the loaders read: each gives a
clear error (which says what is wrong), never a crash or garbage."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import checkpoints as ck  # noqa: E402

import linly_engine as le  # noqa: E402
from linly_engine.formats.packed import write_packed  # noqa: E402
from linly_engine.model import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("good")
    model.save_pretrained(root / "hf", safe_serialization=True)
    files = {
        "model": model,
        "hf": root / "hf",
        "gguf": ck.write_gguf(model, root / "m.gguf"),
        "meta": ck.write_meta_folder(model, root / "meta"),
        "tp": ck.write_tencentpretrain(model, root / "tp"),
    }
    write_packed(load_checkpoint(root / "hf"), root / "m.linly", "q4_0")
    files["linly"] = root / "m.linly"
    return files


def fails(path, *patterns):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        le.Model.load(path)
    for p in patterns:
        assert p in str(e.value), f"{p!r} not in {str(e.value)!r}"


def copy_hf(good, tmp_path):
    dst = tmp_path / "hf"
    shutil.copytree(good["hf"], dst)
    return dst


def test_missing_path(tmp_path):
    fails(tmp_path / "nope.gguf", "no model at")


def test_empty_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"")
    fails(tmp_path / "x.gguf", "not a model this engine reads")


def test_mislabelled_safetensors_named_gguf(good, tmp_path):
    shutil.copy(good["hf"] / "model.safetensors", tmp_path / "model.gguf")
    fails(tmp_path / "model.gguf", "not a model this engine reads")


@pytest.mark.parametrize("keep", [10, 1000, -64])
def test_truncated_gguf(good, tmp_path, keep):
    data = good["gguf"].read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[:keep] if keep > 0 else data[:keep])
    fails(tmp_path / "t.gguf", "truncated or corrupt")


def test_truncated_packed(good, tmp_path):
    data = good["linly"].read_bytes()
    (tmp_path / "t.linly").write_bytes(data[: len(data) // 2])
    fails(tmp_path / "t.linly", "truncated or corrupt")


def test_gguf_with_unsupported_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    fails(tmp_path / "g.gguf", "architecture 'gpt2' is not supported")


def test_gguf_with_unsupported_tensor_type(good, tmp_path):
    fails(ck.write_gguf(good["model"], tmp_path / "q5.gguf", "Q5_0"), "has type Q5_0")


def test_safetensors_header_longer_than_file(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    f = hf / "model.safetensors"
    f.write_bytes(struct.pack("<Q", 1 << 40) + f.read_bytes()[8:])
    fails(hf, "header length", "corrupt")


def test_safetensors_header_not_json(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    f = hf / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"\xff\xfe{["
    f.write_bytes(bytes(data))
    fails(hf, "not valid JSON")


def test_safetensors_truncated_data(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    f = hf / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    fails(hf, "truncated or corrupt")


def test_safetensors_unsupported_dtype(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    f = hf / "model.safetensors"
    data = f.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "I64"
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= hlen
    f.write_bytes(data[:8] + new.ljust(hlen) + data[8 + hlen:])  # safetensors pads headers with spaces
    fails(hf, "dtype I64")


def test_config_not_json(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    (hf / "config.json").write_text("{ not json")
    fails(hf, "config.json is not valid JSON")


def test_unsupported_hf_architecture(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (hf / "config.json").write_text(json.dumps(cfg))
    fails(hf, "is not supported")


def test_config_disagrees_with_weights(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    cfg = json.loads((hf / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (hf / "config.json").write_text(json.dumps(cfg))
    fails(hf, "mlp.gate_proj.weight' has shape [64, 32] but the config needs [128, 32]")


def test_missing_weights_and_missing_shard(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    (hf / "model.safetensors").unlink()
    fails(hf, "no model.safetensors")
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}}))
    fails(hf, "names shards that are missing")


def test_garbage_pytorch_bin(good, tmp_path):
    hf = copy_hf(good, tmp_path)
    (hf / "model.safetensors").unlink()
    (hf / "pytorch_model.bin").write_bytes(b"this is not a pickle" * 10)
    fails(hf, "not a readable PyTorch checkpoint")


def test_meta_params_missing_key(good, tmp_path):
    meta = tmp_path / "meta"
    shutil.copytree(good["meta"], meta)
    params = json.loads((meta / "params.json").read_text())
    del params["n_heads"]
    (meta / "params.json").write_text(json.dumps(params))
    fails(meta, "lacks 'n_heads'")


def test_tencentpretrain_without_config(good, tmp_path):
    shutil.copy(good["tp"], tmp_path / "model.bin")
    fails(tmp_path / "model.bin", "needs its config JSON")


def test_tencentpretrain_wrong_layer_count(good, tmp_path):
    tp = tmp_path / "tp"
    shutil.copytree(good["tp"].parent, tp)
    cfg = json.loads((tp / "llama_config.json").read_text())
    cfg["layers_num"] = 12  # TencentPretrain's default, a known pitfall
    (tp / "llama_config.json").write_text(json.dumps(cfg))
    fails(tp / "linly_model.bin", "weights missing for a 12-layer model", "layers_num")
