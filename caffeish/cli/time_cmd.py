"""``caffeish time``: average forward/backward time per layer, in the shape of Caffe's output."""
import logging
import time

import click

from .. import backend
from ..net import Net
from . import register_command
from .common import gpu_option, level_option, parse_phase, parse_stages, select_device, stage_option

log = logging.getLogger("caffeish")


def _sync():
    if backend.mode() == backend.GPU:
        backend.cupy.cuda.Device().synchronize()


def benchmark(net, iterations):
    """Per-layer mean forward and backward ms over ``iterations`` runs, plus totals.

    Like Caffe's ``time``, backward runs on every layer with the net's
    propagate-down flags, whether or not the layer feeds a loss.
    """
    n = len(net.layers)
    fwd, bwd = [0.0] * n, [0.0] * n
    total_f = total_b = 0.0
    for it in range(iterations):
        start = time.perf_counter()
        for i, layer in enumerate(net.layers):
            t = time.perf_counter()
            layer.Forward(net.bottom_vecs[i], net.top_vecs[i])
            _sync()
            fwd[i] += time.perf_counter() - t
        mid = time.perf_counter()
        for i in range(n - 1, -1, -1):
            t = time.perf_counter()
            net.layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
            _sync()
            bwd[i] += time.perf_counter() - t
        end = time.perf_counter()
        total_f += mid - start
        total_b += end - mid
        log.info("Iteration: %d forward-backward time: %.3f ms.", it + 1, (end - start) * 1e3)
    ms = 1e3 / iterations
    return ([f * ms for f in fwd], [b * ms for b in bwd], total_f * ms, total_b * ms)


@register_command("time")
@click.command()
@click.option("--model", required=True, type=click.Path(), help="The model definition (prototxt).")
@click.option("--iterations", default=50, type=int, show_default=True, help="Iterations to time.")
@click.option("--phase", default="TRAIN", show_default=True, help="TRAIN or TEST.")
@level_option
@stage_option
@gpu_option
def time_command(model, iterations, phase, level, stage, gpu):
    """Time a model's forward and backward passes, layer by layer."""
    select_device(gpu)
    net = Net(model, phase=parse_phase(phase), level=level, stages=parse_stages(stage))
    log.info("Performing Forward")
    loss = net.forward_prefilled()
    log.info("Initial loss: %g", loss)
    log.info("Performing Backward")
    net.backward_from_to()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    t0 = time.perf_counter()
    fwd, bwd, total_f, total_b = benchmark(net, iterations)
    total = (time.perf_counter() - t0) * 1e3
    log.info("Average time per layer: ")
    for layer, f, b in zip(net.layers, fwd, bwd):
        log.info("%10s\tforward: %.5g ms.", layer.name, f)
        log.info("%10s\tbackward: %.5g ms.", layer.name, b)
    log.info("Average Forward pass: %.5g ms.", total_f)
    log.info("Average Backward pass: %.5g ms.", total_b)
    log.info("Average Forward-Backward: %.5g ms.", total_f + total_b)
    log.info("Total Time: %.5g ms.", total)
    log.info("*** Benchmark ends ***")
