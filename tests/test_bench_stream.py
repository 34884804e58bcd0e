"""Host-side pieces of ``evmamba bench stream``'s batch-1 experiments (the GPU parts run only on a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evmamba.bench import stream as bench_stream


class CountingStepper:
    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1


@pytest.mark.parametrize("with_surface", [False, True])
def test_each_token_writes_its_record_after_an_untimed_warm_up(with_surface):
    n, warm, f = 4, 6, 3
    seq = SimpleNamespace(tokens=np.array([7, 8, 9, 10]), dt=np.array([0.0, 0.5, 1.5, 2.0], np.float32),
                          counts=np.array([1, 2, 3, 4], np.int32))
    surf = np.arange(n * f, dtype=np.float32).reshape(n, f) if with_surface else None
    rec = np.full(3 + f, -1.0, np.float32)
    stepper = CountingStepper()
    seen = []
    for i, timed, t0 in bench_stream._record_each_token(stepper, rec, seq, surf, n, warm):
        assert rec[0] == seq.tokens[i] and rec[1] == seq.dt[i] and rec[2] == seq.counts[i]
        if with_surface:
            assert np.array_equal(rec[3:], surf[i])
        else:
            assert np.all(rec[3:] == -1.0)  # no surface: the rest of the record is left alone
        assert isinstance(t0, float)
        seen.append((i, timed, stepper.resets))
    # The warm-up cycles through the first n tokens untimed, then the state is reset once and every token is
    # timed in order.
    assert seen == [(0, False, 0), (1, False, 0), (2, False, 0), (3, False, 0), (0, False, 0), (1, False, 0),
                    (0, True, 1), (1, True, 1), (2, True, 1), (3, True, 1)]


def test_the_overlap_flag_is_gone_the_feed_is_the_steppers():
    from evmamba.cli import build_parser

    parser = build_parser(["bench", "stream"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "stream", "--overlap"])
    assert parser.parse_args(["bench", "stream", "--device", "cuda"]).device == "cuda"
