"""Sampling: each filter keeps what it promises, penalties change the logits as
documented (checked against transformers' logits processors), seeds reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from linly_engine.sampling import Sampler, SamplingParams, repetition_penalties
from linly_engine.stopping import StopStrings

V = 1003  # an odd vocabulary size


def logits(seed=0, scale=3.0, n=V):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def params(**kw):
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    base.update(kw)
    return SamplingParams(**base)


def test_greedy_is_argmax_after_penalties():
    x = logits()
    s = Sampler(params(temperature=0), V)
    assert s.sample(x, []) == int(np.argmax(x))
    best = int(np.argmax(x))
    s = Sampler(params(temperature=0, repetition_penalty=1e6), V)
    assert s.sample(x, [best]) != best


@pytest.mark.parametrize("k", [1, 5, 50])
def test_top_k_never_leaves_the_k_best(k):
    x = logits(1)
    best = set(np.argsort(-x)[:k].tolist())
    s = Sampler(params(top_k=k, seed=3), V)
    draws = {s.sample(x, []) for _ in range(400)}
    assert draws <= best
    if k > 1:
        assert len(draws) > 1


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("scale", [0.5, 3.0])  # flat (the nucleus exceeds the probe) and peaked
def test_top_p_keeps_the_smallest_set_reaching_p(p, scale):
    x = logits(2, scale, n=5000)
    s = Sampler(params(top_p=p), x.size)
    ids, prob = s.candidates(x)
    full = np.exp(x - x.max()).astype(np.float64)
    full /= full.sum()
    order = np.argsort(-full)
    n = len(ids)
    assert set(ids.tolist()) == set(order[:n].tolist())  # the most likely ones
    assert full[order[:n]].sum() >= p - 1e-12  # reach p ...
    assert full[order[:n - 1]].sum() < p  # ... and not one more than needed
    assert prob.sum() == pytest.approx(1.0)


def test_min_p_threshold():
    x = logits(3)
    ids, prob = Sampler(params(min_p=0.2), V).candidates(x)
    full = np.exp(x - x.max())
    assert set(ids.tolist()) == set(np.flatnonzero(full >= 0.2).tolist())


def test_matches_transformers_warpers():
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    x = logits(4, 2.0)
    history = [5, 7, 7, 9, 600, 1000]
    pr = params(temperature=0.7, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.3)
    s = Sampler(pr, V)
    ids, prob = s.candidates(s.apply_penalties(x, np.array(history)))
    t = torch.from_numpy(x.astype(np.float32))[None]
    ids_t = torch.tensor([history])
    for proc in [lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(50),
                 lp.TopPLogitsWarper(0.9), lp.MinPLogitsWarper(0.02)]:
        t = proc(ids_t, t)
    ref = torch.softmax(t[0].double(), -1).numpy()
    assert set(ids.tolist()) == set(np.flatnonzero(ref > 0).tolist())
    np.testing.assert_allclose(prob[np.argsort(ids)], ref[np.sort(ids)], rtol=1e-5)


def test_repetition_penalty_transformers_form():
    x = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = Sampler(params(repetition_penalty=2.0), 5).apply_penalties(x, np.array([0, 1, 1, 3]))
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, -2.0, 0.5])  # once per distinct token, sign-aware


def test_repetition_penalty_window_and_slope():
    x = np.full(10, 2.0, np.float32)
    hist = np.array([1, 2, 3, 4, 5, 6])
    out = Sampler(params(repetition_penalty=2.0, repetition_penalty_range=3), 10).apply_penalties(x, hist)
    np.testing.assert_allclose(out, [2, 2, 2, 2, 1, 1, 1, 2, 2, 2])  # only the last 3 tokens
    ids, pen = repetition_penalties(np.arange(8), 2.0, 8, slope=1.0)
    assert pen[-1] == pytest.approx(2.0) and pen[0] == pytest.approx(1.0)
    assert np.all(np.diff(pen) > 0)  # newer tokens are penalised more
    ids, pen = repetition_penalties(np.array([3, 1, 3]), 2.0, 8, slope=1.0)  # a repeat takes its newest position's
    assert dict(zip(ids.tolist(), pen.tolist()))[3] == pytest.approx(2.0)


def test_presence_and_frequency_penalties():
    x = np.zeros(6, np.float32)
    s = Sampler(params(temperature=0, presence_penalty=0.5, frequency_penalty=0.25), 6)
    s.counts[:] = [0, 1, 3, 0, 0, 0]
    np.testing.assert_allclose(s.apply_penalties(x, []), [0, -0.75, -1.25, 0, 0, 0])


def test_seed_reproduces_and_differs():
    x = logits(5, 1.0)

    def run(seed):
        s = Sampler(params(seed=seed, top_k=100), V)
        return [s.sample(x, []) for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_sampling_frequencies_follow_probabilities():
    x = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    s = Sampler(params(seed=0), 3)
    counts = np.bincount([s.sample(x, []) for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.03)


@pytest.mark.parametrize("bad, msg", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"), (dict(repetition_penalty=0), "repetition_penalty"), (dict(stop=[""]), "stop"),
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=float("nan")), "temperature"),
])
def test_bad_params_are_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        SamplingParams(**bad)


def test_unknown_option_names_are_listed():
    with pytest.raises(TypeError, match="unknown sampling option.*top_q"):
        SamplingParams().updated(top_q=0.5)


# ---- stop strings ----------------------------------------------------------------------

def feed_all(stops, pieces):
    s = StopStrings(stops)
    out, hit = [], False
    for p in pieces:
        text, hit = s.feed(p)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(s.flush())
    return "".join(out), hit, out


def test_stop_string_cuts_exactly_across_pieces():
    text, hit, out = feed_all(["User:"], ["Hello", " there\nUs", "er", ": more"])
    assert hit and text == "Hello there\n"
    assert out[1] == " there\n"  # "Us" held back until it is known


def test_held_back_text_is_released_when_it_is_not_a_stop():
    text, hit, out = feed_all(["User:"], ["a Us", "e b"])
    assert not hit and text == "a Use b"


def test_earliest_of_several_stops_wins():
    text, hit, _ = feed_all(["###", "\n\n"], ["one\n\ntwo ### three"])
    assert hit and text == "one"


def test_flush_gives_back_held_text_at_the_end():
    text, hit, _ = feed_all(["</answer>"], ["x </ans"])
    assert not hit and text == "x </ans"
