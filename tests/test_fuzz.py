"""The fuzz harnesses (tests/fuzz/) in the test suite: every seed and every input that
ever crashed a harness goes through its target (a crash fails the test), the crashers'
errors are checked by name, and each target runs a short atheris campaign."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
sys.path.insert(0, str(FUZZ))

atheris = pytest.importorskip("atheris")
import harnesses  # noqa: E402

# Seconds of fuzzing per target in the suite (the long campaigns: tests/fuzz/README.md).
CAMPAIGN_SECONDS = int(os.environ.get("LINLY_FUZZ_SECONDS", "10"))
# A fixed libFuzzer seed, so that the suite replays the same mutations on every run: a
# new finding shows up in a long campaign (or with LINLY_FUZZ_SEED=0, a random seed) and
# becomes a regression input, rather than failing an unrelated change at random.
CAMPAIGN_SEED = int(os.environ.get("LINLY_FUZZ_SEED", "1"))


def inputs(target: str) -> list[Path]:
    dirs = [FUZZ / "seeds" / harnesses.SEED_DIRS.get(target, target), FUZZ / "regressions" / target]
    return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if p.is_file())


def test_seeds_and_regressions():
    ran = 0
    for target, fn in harnesses.TARGETS.items():
        for p in inputs(target):
            fn(p.read_bytes())  # only ValueError is caught inside; anything else fails here
            ran += 1
    assert ran >= 30  # the seeds are there (a missing folder would pass vacuously)


def test_packed_table_entry_without_layout_is_a_clear_error(tmp_path):
    from linly_engine.formats.hf import CheckpointError
    from linly_engine.model import load_checkpoint

    p = tmp_path / "m.linly"
    p.write_bytes((FUZZ / "regressions" / "packed" / "tensor-table-entry-without-layout").read_bytes())
    with pytest.raises(CheckpointError, match="tensor table entry .* is corrupt .*convert the model again"):
        load_checkpoint(p)


def test_packed_file_without_checksum_is_a_clear_error(tmp_path):
    from linly_engine.formats.hf import CheckpointError
    from linly_engine.formats.packed import verify

    p = tmp_path / "m.linly"
    p.write_bytes((FUZZ / "regressions" / "packed" / "checksum-field-missing").read_bytes())
    with pytest.raises(CheckpointError, match="carries no checksum .*convert it again"):
        verify(p)


def test_template_raise_exception_is_a_value_error():
    from linly_engine.templates import ChatTemplate

    source = (FUZZ / "regressions" / "templates_source" / "raise-exception-in-template").read_text()
    t = ChatTemplate("model", source)
    with pytest.raises(ValueError, match="chat template 'model' failed: TemplateError: roles must alternate"):
        t.render([{"role": "assistant", "content": "x"}])
    assert t.render([{"role": "user", "content": "x"}]).startswith('"x"')


@pytest.mark.parametrize("target", list(harnesses.TARGETS))
def test_short_campaign(target, tmp_path):
    """A bounded coverage-guided run from the seeds: no crash, no hang (-timeout), no
    input over the memory limit."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = FUZZ / "seeds" / harnesses.SEED_DIRS.get(target, target)
    r = subprocess.run([sys.executable, str(FUZZ / "fuzz.py"), target, str(corpus), str(seeds),
                        f"-max_total_time={CAMPAIGN_SECONDS}", f"-seed={CAMPAIGN_SEED}", "-timeout=30", "-rss_limit_mb=3072",
                        f"-artifact_prefix={tmp_path}/"],
                       capture_output=True, text=True, timeout=CAMPAIGN_SECONDS + 180,
                       env={**os.environ, "DS_ACCELERATOR": "cpu"})
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "Done " in log and " runs in " in log, log[-2000:]


def test_a_pickle_that_is_not_a_state_dict_is_a_clear_error(tmp_path):
    from linly_engine.formats.hf import CheckpointError, read_torch_bin

    p = tmp_path / "pytorch_model.bin"
    p.write_bytes((FUZZ / "regressions" / "torch_bin" / "pickle-of-a-string").read_bytes())
    with pytest.raises(CheckpointError, match="not a state dict of named tensors"):
        read_torch_bin(p)


def test_gguf_vocabulary_with_bad_entries_is_a_clear_error():
    import json

    from linly_engine.tokenizer import TokenizerError, tokenizer_from_gguf_fields

    blob = (FUZZ / "regressions" / "tokenizer_files" / "gguf-token-with-lone-surrogate").read_bytes()[1:]
    with pytest.raises(TokenizerError, match="is not valid UTF-8 text"):
        tokenizer_from_gguf_fields(json.loads(blob))
    good = json.loads((FUZZ / "seeds" / "tokenizer_files" / "gguf_fields").read_bytes()[1:])
    for key, bad, words in (("tokenizer.ggml.tokens", 7, "not a str"), ("tokenizer.ggml.scores", "x", "not a"),
                            ("tokenizer.ggml.token_type", None, "not a int"),
                            ("tokenizer.ggml.unknown_token_id", "0", "must be an integer")):
        fields = json.loads(json.dumps(good))
        if isinstance(fields[key], list):
            fields[key][5] = bad
        else:
            fields[key] = bad
        with pytest.raises(TokenizerError, match=words):
            tokenizer_from_gguf_fields(fields)
    assert tokenizer_from_gguf_fields(good).vocab_size == len(good["tokenizer.ggml.tokens"])


def test_stream_decoder_with_out_of_range_context_says_so():
    from linly_engine.tokenizer import StreamDecoder, TokenizerError

    tok = harnesses.fixed_tokenizers()[0]
    stream = StreamDecoder(tok, [tok.vocab_size + 4])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        stream.push(5)


def test_model_sizes_that_cannot_be_right_are_clear_errors(tmp_path):
    import json

    from linly_engine.formats.hf import CheckpointError
    from linly_engine.formats.meta import load_tencentpretrain

    (tmp_path / "linly_model.bin").write_bytes((FUZZ / "seeds" / "torch_bin" / "linly_model.bin").read_bytes())
    for cfg, words in (({"emb_size": 32, "heads_num": 0, "layers_num": 1}, "must be positive"),
                       ({"emb_size": 32, "heads_num": 3, "layers_num": 1}, "multiple of heads"),
                       ({"emb_size": 32, "heads_num": 2, "kv_heads_num": 3, "layers_num": 1}, "rotary pairs")):
        (tmp_path / "llama_config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=words):
            load_tencentpretrain(tmp_path / "linly_model.bin")


def test_gguf_array_longer_than_the_file_is_refused_at_once(tmp_path):
    import time

    from linly_engine.formats.hf import CheckpointError
    from linly_engine.model import load_checkpoint

    p = tmp_path / "m.gguf"
    p.write_bytes((FUZZ / "regressions" / "gguf" / "array-claiming-billions-of-elements").read_bytes())
    t0 = time.time()
    with pytest.raises(CheckpointError, match="run past the end of the file"):
        load_checkpoint(p)
    assert time.time() - t0 < 10  # it used to walk 2^32 elements
