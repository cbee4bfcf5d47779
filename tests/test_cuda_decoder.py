"""The GPU decoder (``Model.load(..., device="cuda")``) on small random models made here:
against transformers (fp16 weights) and against the CPU decoder (the quantised formats),
over a multi-token prompt and 16 decode steps, prompts longer than one prefill chunk and
one attention split, graph replay against plain launches, and its errors. The GPU tests
skip without a device; the errors for a missing device run everywhere."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import linly_engine as le  # noqa: E402
from test_model_hf import CASES, assert_close, make_model, reference_logits, run_engine  # noqa: E402

needs_gpu = pytest.mark.skipif(not le.cuda.is_available(), reason=f"no CUDA: {le.cuda.unavailable_reason()}")

PROMPT = list(range(3, 40))
CONT = [7, 100, 250, 3, 3, 42, 17, 0, 9, 81, 64, 200, 11, 5, 150, 99]  # 16 decode steps


def test_unknown_device_is_refused(tmp_path):
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        le.Model.load(tmp_path, device="tpu")


@pytest.mark.skipif(le.cuda.is_available(), reason="a GPU is here")
def test_cuda_without_a_device_says_why(tmp_path):
    _, path = make_model(tmp_path)
    with pytest.raises(RuntimeError, match="CUDA was asked for but cannot be used"):
        le.Model.load(path, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA was asked for but cannot be used"):
        le.Engine.load(path, device="cuda")


@pytest.mark.skipif(le.cuda.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("command", [["generate", "-m", "{path}", "--device", "cuda", "-n", "2", "hi"],
                                     ["bench", "{path}", "--device", "cuda", "--gen", "2", "--prompt", "2"]])
def test_cli_device_cuda_without_a_device(tmp_path, capsys, command):
    from linly_engine.cli import main

    _, path = make_model(tmp_path)
    assert main([a.format(path=path) for a in command]) == 1
    assert "CUDA was asked for but cannot be used" in capsys.readouterr().err


@pytest.mark.skipif(not le.cuda.built() or le.cuda.is_available(), reason="needs a CUDA build without a device")
def test_gpu_weights_are_checked_before_the_device(tmp_path):
    """The GPU model's argument checks run before it looks for a device, so CI (a CUDA
    build, no GPU) covers them: valid sets get as far as the device, bad ones say why."""
    from linly_engine.model import gpu_weights, load_checkpoint

    _, path = make_model(tmp_path, "qwen2")
    ck = load_checkpoint(path)
    cfg = dict(ck.config, max_context=64)
    for quant in ("q4_0", "q4_g64", "q8_0", "f16", None):
        with pytest.raises(RuntimeError, match="no usable CUDA device"):
            le._C.CudaLlamaModel(cfg, gpu_weights(ck, quant))
    bad = gpu_weights(ck, "q4_0")
    bad["model.layers.0.self_attn.o_proj.weight"] = ("f16", np.zeros((3, 5), np.float16))
    with pytest.raises(ValueError, match=r"o_proj.weight' has shape \(3, 5\) but the config needs \(64, 64\)"):
        le._C.CudaLlamaModel(cfg, bad)
    bad = gpu_weights(ck, "q4_0")
    bad["model.layers.1.mlp.up_proj.weight"] = ("q4_0", np.zeros((96, 7), np.uint8))
    with pytest.raises(ValueError):
        le._C.CudaLlamaModel(cfg, bad)
    bad = gpu_weights(ck, None)
    del bad["model.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match="missing weight 'model.layers.0.self_attn.k_proj.bias'"):
        le._C.CudaLlamaModel(cfg, bad)
    bad = gpu_weights(ck, None)
    bad["model.embed_tokens.weight"] = np.zeros((251, 64), np.float32)
    with pytest.raises(ValueError, match="must be a float16 \\[251, 64\\] array"):
        le._C.CudaLlamaModel(cfg, bad)
    bad = gpu_weights(ck, None)
    bad["lm_head.weight"] = np.zeros((251, 64), np.float16)
    with pytest.raises(TypeError, match="must be a \\(format, array\\) tuple"):
        le._C.CudaLlamaModel(cfg, bad)


@needs_gpu
@pytest.mark.parametrize("case", list(CASES) + ["qwen2"])
def test_fp16_matches_transformers(tmp_path, case):
    model, path = make_model(tmp_path, "qwen2") if case == "qwen2" else make_model(tmp_path, **CASES[case])
    want = reference_logits(model, PROMPT + CONT)
    m = le.Model.load(path, quant="f16", device="cuda")
    assert m.info()["device"] == "cuda"
    # fp16 activations and weights against transformers' f32: the tolerance of the CPU
    # decoder's f16 test
    assert_close(run_engine(m, PROMPT, CONT), want, 1e-2)


@needs_gpu
@pytest.mark.parametrize("quant", ["q4_0", "q4_1", "q4_g32", "q4_g64", "q8_0"])
def test_quantised_matches_the_cpu_decoder(tmp_path, quant):
    _, path = make_model(tmp_path)
    cpu = le.Model.load(path, quant=quant, kv_cache="f32")
    gpu = le.Model.load(path, quant=quant, device="cuda")
    want = run_engine(cpu, PROMPT, CONT)
    got = run_engine(gpu, PROMPT, CONT)
    # the same weights; fp16 activations (GPU) against int8 + residual (CPU)
    assert_close(got, want, 2e-2)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@needs_gpu
def test_long_prompt_crosses_chunks_and_attention_splits(tmp_path):
    model, path = make_model(tmp_path, max_position_embeddings=1024)
    ids = np.random.default_rng(3).integers(0, 251, 600).tolist()  # 3 prefill chunks, 3 cache splits
    want = reference_logits(model, ids)
    m = le.Model.load(path, quant="f16", device="cuda", max_context=1024)
    assert_close(m.prefill(ids, all_logits=True), want, 1e-2)
    m.reset()  # decode across the split boundary at 256
    m.prefill(ids[:250])
    rows = [m.decode(t) for t in ids[250:262]]
    assert_close(np.stack(rows), want[250:262], 1e-2)


@needs_gpu
def test_graph_replay_equals_plain_launches(tmp_path):
    _, path = make_model(tmp_path)
    m = le.Model.load(path, quant="q4_0", device="cuda")
    assert m._native.use_graph
    with_graph = run_engine(m, PROMPT, CONT)
    m._native.use_graph = False
    without = run_engine(m, PROMPT, CONT)
    np.testing.assert_array_equal(with_graph, without)


@needs_gpu
def test_prefix_caching_and_errors_on_the_gpu(tmp_path):
    _, path = make_model(tmp_path)
    m = le.Model.load(path, quant="f16", device="cuda", max_context=48)
    whole = m.prefill(PROMPT, all_logits=True)
    m.truncate(10)
    np.testing.assert_allclose(m.prefill(PROMPT[10:]), whole[-1], rtol=1e-3, atol=1e-3 * np.abs(whole).max())
    with pytest.raises(ValueError, match=r"20 tokens at position 37 exceed the context of 48 tokens"):
        m.prefill(list(range(20)))
    with pytest.raises(ValueError, match=r"token id 251 at index 1 is outside the vocabulary \[0, 251\)"):
        m.prefill([1, 251])
    m.reset()
    assert m.position == 0 and m.decode(5).shape == (251,)
    with pytest.raises(ValueError, match="slots must be 1"):
        le.Model.load(path, device="cuda", slots=2)
    with pytest.raises(ValueError, match="f16 KV cache"):
        le.Model.load(path, device="cuda", kv_cache="q8_0")


@needs_gpu
def test_greedy_tokens_agree_with_the_cpu(tmp_path):
    """Greedy next tokens of the GPU and the CPU decoder (both f16 weights) along one text."""
    _, path = make_model(tmp_path)
    cpu = le.Model.load(path, quant="f16", kv_cache="f32")
    gpu = le.Model.load(path, quant="f16", device="cuda")
    seq_cpu, seq_gpu = list(PROMPT), list(PROMPT)
    lc, lg = cpu.prefill(seq_cpu), gpu.prefill(seq_gpu)
    agree = 0
    for _ in range(24):
        a, b = int(np.argmax(lc)), int(np.argmax(lg))
        agree += a == b
        seq_cpu.append(a)
        lc, lg = cpu.decode(a), gpu.decode(a)  # both continue the CPU's text
    assert agree >= 22


def test_gpu_memory_check_refuses_what_does_not_fit(tmp_path, monkeypatch):
    """The GPU model is refused before any upload when the device lacks the room; the
    count covers at least the weights and the whole-context KV cache."""
    import linly_engine.model as model_mod
    from linly_engine.model import check_gpu_memory, gpu_memory_needed, gpu_weights, load_checkpoint

    _, path = make_model(tmp_path)
    ck = load_checkpoint(path)
    cfg = dict(ck.config, max_context=128)
    weights = gpu_weights(ck, "q4_0")
    need = gpu_memory_needed(cfg, weights)
    kv = 2 * cfg["num_hidden_layers"] * 128 * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    assert need > sum((w[1] if isinstance(w, tuple) else w).nbytes for w in weights.values()) + kv
    monkeypatch.setattr(model_mod._C, "cuda_memory_info", lambda: (need - 1, 8 << 30), raising=False)
    with pytest.raises(ValueError, match=r"needs about .* GiB of GPU memory .* but the GPU has"):
        check_gpu_memory(cfg, weights)
    monkeypatch.setattr(model_mod._C, "cuda_memory_info", lambda: (need, 8 << 30), raising=False)
    check_gpu_memory(cfg, weights)


def test_gpu_matrix_keeps_gpu_layouts_and_turns_the_rest_into_fp16():
    """What the GPU decoder receives per matrix: its own rows for the formats with a GPU
    layout (panels unpacked), fp16 of the dequantised weights for everything else."""
    from linly_engine.formats.checkpoint import Tensor
    from linly_engine.model import gpu_matrix

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((37, 96)) * 0.1).astype(np.float32)
    rows = le.quantize(w, "q4_1")
    fmt, data = gpu_matrix(Tensor(rows, "q4_1", (37, 96)), None)
    assert fmt == "q4_1" and np.array_equal(data, rows)
    panels = le._C.repack_panels(rows, "q4_1", 96)
    fmt, data = gpu_matrix(Tensor(panels, "q4_1", (37, 96), "panel16"), None)
    assert fmt == "q4_1" and np.array_equal(data, rows)
    fmt, data = gpu_matrix(Tensor(w, "f32", (37, 96)), "q8_0")  # converted as asked
    assert fmt == "q8_0" and np.array_equal(data, le.quantize(w, "q8_0"))
    fmt, data = gpu_matrix(Tensor(w, "f32", (37, 96)), None)  # no GPU layout: fp16
    assert fmt == "f16" and data.dtype == np.float16 and np.array_equal(data, w.astype(np.float16))
    order = rng.permutation(96).astype(np.int32)  # act-order: the GPU takes the inputs in order
    t = Tensor(le.quantize(np.ascontiguousarray(w[:, order]), "q4_0"), "q4_0", (37, 96), input_order=order)
    fmt, data = gpu_matrix(t, None)
    assert fmt == "f16" and np.array_equal(data, t.to_f32().astype(np.float16))
    # within q4_0 rounding (a block step is at most max|w|/8 ≈ 0.05 here); a wrong order would be ~0.5 off
    np.testing.assert_allclose(data.astype(np.float32), w, atol=0.04)


@pytest.mark.skipif(le.cuda.is_available(), reason="a GPU is here")
def test_server_on_cuda_without_a_device_reports_why(tmp_path):
    """linly serve --device cuda on a machine without a GPU stays up and says why on /health."""
    from fastapi.testclient import TestClient

    from linly_engine.serve import ServerConfig
    from linly_engine.serve.app import create_app

    _, path = make_model(tmp_path)
    app = create_app(ServerConfig(model_path=str(path), parallel=1, device="cuda"), load_in_background=False)
    with TestClient(app) as client:
        r = client.get("/health")
    assert r.status_code == 503
    assert "CUDA was asked for but cannot be used" in r.text
