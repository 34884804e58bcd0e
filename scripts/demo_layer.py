"""A small demonstration of the ``Mamba`` layer on an event stream, runnable on any machine.

Builds an event-mode layer, runs one forward pass over a batch of random event sequences, then replays the
first sequence one element at a time with ``step`` and checks that both give the same outputs.
"""

from __future__ import annotations

import time

import torch

from evmamba.model import Mamba


def main() -> None:
    torch.manual_seed(0)
    layer = Mamba(d_model=64, d_state=16, discretization="zoh")
    batch, length = 4, 512
    x = torch.randn(batch, length, 64)
    gaps_ms = torch.distributions.Exponential(2.0).sample((batch, length))  # Poisson events, 2 per ms
    gaps_ms[:, 0] = 0.0  # the first element has no predecessor

    with torch.no_grad():
        t0 = time.perf_counter()
        y = layer(x, integration_timesteps=gaps_ms)
        t_forward = time.perf_counter() - t0

        cache = layer.allocate_inference_cache(1, length)
        t0 = time.perf_counter()
        steps = [layer.step(x[:1, t : t + 1], cache, gaps_ms[:1, t])[0] for t in range(length)]
        t_step = (time.perf_counter() - t0) / length
    err = float((torch.cat(steps, 1) - y[:1]).norm() / y[:1].norm())
    print(f"Mamba(d_model=64, d_state=16, discretization='zoh'), {sum(p.numel() for p in layer.parameters())} parameters")
    print(f"forward over ({batch}, {length}, 64) event-mode inputs: {t_forward * 1e3:.1f} ms")
    print(f"step: {t_step * 1e6:.0f} µs per element; step vs forward relative error {err:.1e}")
    print("OK" if err < 1e-5 else "MISMATCH")


if __name__ == "__main__":
    main()
