"""The engine's packed .linly file: round trip, in-place use, checksum, atomic writes, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import linly_engine as le  # noqa: E402
from linly_engine.formats.hf import CheckpointError  # noqa: E402
from linly_engine.formats.packed import verify, write_packed  # noqa: E402
from linly_engine.model import load_checkpoint  # noqa: E402

IDS = [5, 9, 77, 3, 140, 2, 60]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, initializer_range=0.15,
                                   tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("hf") / "model"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize("quant", ["q4_0", "q8_0", "q4_g32", "f16", "f32"])
def test_round_trip_matches_in_memory_conversion(hf_folder, tmp_path, quant):
    out = tmp_path / f"m-{quant}.linly"
    summary = write_packed(load_checkpoint(hf_folder), out, quant)
    assert out.stat().st_size == summary["bytes"]
    packed = le.Model.load(out)
    direct = le.Model.load(hf_folder, quant=quant)
    np.testing.assert_array_equal(packed.prefill(IDS, all_logits=True), direct.prefill(IDS, all_logits=True))
    # tied head stored once: 14 + embedding; 4-bit requests keep the embedding/head at q8_0
    assert packed.info()["matrix_formats"] == ({quant: 14, "q8_0": 1} if quant.startswith("q4") else {quant: 15})
    assert verify(out)["tensors"] == 2 * 9 + 2


def test_verify_detects_a_flipped_byte(hf_folder, tmp_path):
    out = tmp_path / "m.linly"
    write_packed(load_checkpoint(hf_folder), out, "q4_0")
    import gguf

    offset = next(t.data_offset for t in gguf.GGUFReader(out).tensors if t.name.endswith("down_proj.weight"))
    data = bytearray(out.read_bytes())
    data[offset + 7] ^= 0x01  # one bit inside a weight matrix
    out.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify(out)


def test_interrupted_write_leaves_no_file_and_keeps_the_old_one(hf_folder, tmp_path):
    out = tmp_path / "m.linly"
    write_packed(load_checkpoint(hf_folder), out, "q8_0")
    before = out.read_bytes()
    seen = []

    def interrupt(name):
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_packed(load_checkpoint(hf_folder), out, "q4_0", progress=interrupt)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.linly"]  # no temporary left behind


def linly(*args):
    return subprocess.run([sys.executable, "-m", "linly_engine", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_convert_verify_info(hf_folder, tmp_path):
    out = tmp_path / "cli.linly"
    r = linly("convert", hf_folder, out, "--quant", "q4_0")
    assert r.returncode == 0, r.stderr
    assert "bits/weight" in r.stdout
    r = linly("convert", hf_folder, out)
    assert r.returncode == 1 and "exists; pass --force" in r.stderr
    assert linly("convert", hf_folder, out, "--force", "--quant", "q8_0").returncode == 0
    r = linly("verify", out)
    assert r.returncode == 0 and r.stdout.startswith("OK")
    r = linly("info", out, "--json")
    assert r.returncode == 0 and '"q8_0": 15' in r.stdout
    r = linly("info", tmp_path / "nothing-here")
    assert r.returncode == 1 and "no model at" in r.stderr


def test_tokenizer_travels_inside(hf_folder, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(hf_folder, src)
    (src / "tokenizer.json").write_text('{"model": {"vocab": {"你好": 0}}}', encoding="utf-8")
    write_packed(load_checkpoint(src), tmp_path / "t.linly", "q8_0")
    ck = load_checkpoint(tmp_path / "t.linly")
    assert ck.metadata["files"]["tokenizer.json"].decode("utf-8") == '{"model": {"vocab": {"你好": 0}}}'
    assert verify(tmp_path / "t.linly")["tensors"] == 2 * 9 + 2
