"""Crash safety of `linly convert`: a SIGKILL in the middle of writing leaves the previous
good file in place and nothing half-written under the final name; the next conversion
clears the dead writer's temporary."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from linly_engine.formats.packed import verify

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """Large enough (about 70 MB of f32) that writing takes a while."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                                   num_attention_heads=8, num_key_value_heads=4)
    path = tmp_path_factory.mktemp("big") / "model"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def test_sigkill_during_convert_keeps_the_old_file(big_folder, tmp_path):
    out = tmp_path / "m.linly"
    linly = [sys.executable, "-m", "linly_engine", "convert", str(big_folder), str(out), "--quiet"]
    assert subprocess.run(linly + ["--quant", "q8_0"], capture_output=True, timeout=300).returncode == 0
    before = hashlib.sha256(out.read_bytes()).hexdigest()  # a digest: pytest would diff megabytes for hours
    proc = subprocess.Popen(linly + ["--quant", "f16", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 120
    while time.time() < end and proc.poll() is None:
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".m.linly.tmp-")]
        if tmp and tmp[0].stat().st_size > 0:  # the new file is being written
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(30)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the conversion finished before it could be killed mid-write (machine too fast for the test)")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before  # the previous good file, untouched
    assert verify(out)["tensors"] > 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m.linly"]
    # the killed writer's temporary is cleared by the next conversion
    assert subprocess.run(linly + ["--quant", "q8_0", "--force"], capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.linly"]
