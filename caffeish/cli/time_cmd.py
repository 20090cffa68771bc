"""``caffeish time``: average forward/backward time per layer, in the shape of Caffe's output."""
import logging
import time

import click

from .. import backend
from ..cpu import native
from ..net import Net
from . import register_command
from .common import gpu_option, level_option, parse_phase, parse_stages, select_device, stage_option

log = logging.getLogger("caffeish")


def _sync():
    if backend.mode() == backend.GPU:
        backend.cupy.cuda.Device().synchronize()


def gemm_peak(size=1024, repeats=5):
    """GFLOP/s of a square float32 matmul on the current device: the yardstick for the per-layer rates."""
    xp = backend.xp()
    a = xp.ones((size, size), dtype="float32")
    b = xp.ones((size, size), dtype="float32")
    out = xp.empty((size, size), dtype="float32")
    xp.matmul(a, b, out=out)  # warm-up: threads, caches, kernels
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        xp.matmul(a, b, out=out)
        _sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size ** 3 / best / 1e9


def layer_flops(net, i):
    """Forward floating-point operations of layer ``i`` (2 per multiply-add, ``Layer.macs``), or None when it
    counts none.  Backward does as many again per gradient it computes (weights, input)."""
    return 2 * net.layers[i].macs(net.bottom_vecs[i], net.top_vecs[i]) or None


def _rate(flops, ms, peak):
    if not flops or ms <= 0:
        return ""
    rate = flops / (ms * 1e6)
    return f" ({rate:.1f} GFLOP/s, {100.0 * rate / peak:.0f}% of peak)" if peak else f" ({rate:.1f} GFLOP/s)"


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
@click.option("--iterations", default=50, type=click.IntRange(min=1), show_default=True,
              help="Iterations to time.")
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
    peak = gemm_peak()
    log.info("GEMM peak: %.1f GFLOP/s (float32 1024 x 1024 matmul)", peak)
    for layer in net.layers:
        engine = getattr(layer, "engine", None)
        if engine is not None:  # chosen by caffeish.layers.vision.engines
            log.info("Engine: %s (%s): %s -- %s", layer.name, layer.type, engine.name, engine.reason)
    convs = [layer for layer in net.layers if layer.type == "Convolution"]
    if convs:
        direct = [layer.name for layer in convs if layer.engine.name == "native"]
        log.info("Native direct convolution: %s; used by %d of %d Convolution layers%s", native.status(),
                 len(direct), len(convs), f" ({', '.join(direct)})" if direct else "")
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    t0 = time.perf_counter()
    fwd, bwd, total_f, total_b = benchmark(net, iterations)
    total = (time.perf_counter() - t0) * 1e3
    log.info("Average time per layer: ")
    for i, (layer, f, b) in enumerate(zip(net.layers, fwd, bwd)):
        flops = layer_flops(net, i)
        # Backward runs one GEMM of the forward's size for the weights' gradient (when learned) and one for
        # the input's (when it propagates down), so count only those that ran.
        gemms = int(bool(layer.param_propagate_down and layer.param_propagate_down[0]))
        gemms += int(any(net.bottom_need_backward[i]))
        log.info("%10s\tforward: %.5g ms.%s", layer.name, f, _rate(flops, f, peak))
        log.info("%10s\tbackward: %.5g ms.%s", layer.name, b, _rate(flops and gemms * flops, b, peak))
    log.info("Average Forward pass: %.5g ms.", total_f)
    log.info("Average Backward pass: %.5g ms.", total_b)
    log.info("Average Forward-Backward: %.5g ms.", total_f + total_b)
    log.info("Total Time: %.5g ms.", total)
    log.info("*** Benchmark ends ***")
