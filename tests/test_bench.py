"""The measurement rules of linly_engine.bench (the speed itself is never asserted)."""

from linly_engine import bench


def test_interleaved_takes_turns_and_ratios_pair_rounds():
    calls: list[str] = []
    rates = {"a": iter([(10.0, 4.0), (30.0, 8.0), (20.0, 2.0)]), "b": iter([(5.0, 1.0), (10.0, 8.0), (40.0, 1.0)])}

    def runner(name):
        def once():
            calls.append(name)
            return next(rates[name])
        return once

    runs = bench.interleaved({"a": runner("a"), "b": runner("b")}, 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert runs["a"] == [(10.0, 4.0), (30.0, 8.0), (20.0, 2.0)]
    # per round a/b: prefill 2, 3, 0.5; decode 4, 1, 2 -> medians 2 and 2, while the
    # ratio of the medians would be 20/10 = 2 and 4/1 = 4
    assert bench.paired_ratios(runs["a"], runs["b"]) == (2.0, 2.0)
