"""forward_batch: several sequences in one step give what each gives alone."""

from __future__ import annotations

import numpy as np
import pytest

import linly_engine as le

pytest.importorskip("transformers")


@pytest.mark.parametrize("quant, kv", [(None, "f32"), ("q4_0", "f16"), ("q8_0", "f16")])
def test_batched_steps_equal_single_sequences(chat_model_folder, quant, kv):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 900, size=n).tolist() for n in (7, 1, 23)]
    conts = [rng.integers(3, 900, size=5).tolist() for _ in prompts]

    alone = []
    for p, c in zip(prompts, conts):
        m = le.Model.load(chat_model_folder, quant=quant, kv_cache=kv, max_context=64)
        rows = [m.prefill(p)] + [m.decode(t) for t in c]
        alone.append(np.stack(rows))

    mb = le.Model.load(chat_model_folder, quant=quant, kv_cache=kv, max_context=64, slots=4)
    # slots 2, 0, 3 (not in order; slot 1 stays empty): prefill together, then decode together
    slots = [2, 0, 3]
    got = [[row] for row in mb.forward_batch(list(zip(slots, prompts)))]
    for step in range(5):
        out = mb.forward_batch([(s, [c[step]]) for s, c in zip(slots, conts)])
        for i in range(3):
            got[i].append(out[i])
    for i in range(3):
        np.testing.assert_allclose(np.stack(got[i]), alone[i], rtol=0, atol=1e-5 * np.abs(alone[i]).max())
    assert [mb.slot_position(s) for s in range(4)] == [1 + 5, 0, 7 + 5, 23 + 5]


def test_mixed_prefill_and_decode_and_truncate(chat_model_folder):
    m = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64, slots=2)
    ref = le.Model.load(chat_model_folder, kv_cache="f32", max_context=64)
    a, b = [5, 6, 7, 8], [9, 10, 11]
    m.forward_batch([(0, a)])
    out = m.forward_batch([(0, [12]), (1, b)])  # one sequence decodes while another prefills
    np.testing.assert_allclose(out[0], ref.prefill(a + [12]), atol=1e-5)
    ref.reset()
    np.testing.assert_allclose(out[1], ref.prefill(b), atol=1e-5)
    m.truncate(2, slot=0)
    ref.reset()
    np.testing.assert_allclose(m.forward_batch([(0, [13])])[0], ref.prefill(a[:2] + [13]), atol=1e-5)


def test_bad_batches_are_refused(chat_model_folder):
    m = le.Model.load(chat_model_folder, max_context=16, slots=2)
    with pytest.raises(ValueError, match="slot 2 is outside"):
        m.forward_batch([(2, [1])])
    with pytest.raises(ValueError, match="appears twice"):
        m.forward_batch([(0, [1]), (0, [2])])
    with pytest.raises(ValueError, match="exceed the context of 16"):
        m.forward_batch([(1, list(range(3, 20)))])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.forward_batch([(1, [5000])])
    with pytest.raises(ValueError, match="non-empty"):
        m.forward_batch([])
    with pytest.raises(ValueError, match="slots must be in"):
        le.Model.load(chat_model_folder, max_context=16, slots=0)
