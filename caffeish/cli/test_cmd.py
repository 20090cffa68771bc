"""``caffeish test``: score a trained model batch by batch, then the means (as `caffe test`)."""
import logging

import click
import numpy

from .. import backend
from ..net import TEST, Net
from . import register_command
from .common import gpu_option, level_option, parse_stages, select_device, stage_option

log = logging.getLogger("caffeish")


@register_command("test")
@click.command()
@click.option("--model", required=True, type=click.Path(), help="The model definition (prototxt).")
@click.option("--weights", required=True, help="The trained weights (.caffemodel or .caffemodel.h5).")
@click.option("--iterations", default=50, type=click.IntRange(min=1), show_default=True, help="Batches to score.")
@gpu_option
@level_option
@stage_option
def test(model, weights, iterations, gpu, level, stage):
    """Score a model on its TEST phase."""
    gpus = select_device(gpu)
    log.info("Use %s.", f"GPU {gpus[0]}" if gpus else "CPU")
    net = Net(model, phase=TEST, level=level, stages=parse_stages(stage))
    try:
        from ..weights import load_weights
        load_weights(net, weights)
        log.info("Running for %d iterations.", iterations)
        scores, names, loss = [], [], 0.0
        for i in range(iterations):
            loss += net.forward_prefilled()
            idx = 0
            for name in net.outputs:
                for value in backend.to_cpu(net.blobs[name].data).astype(numpy.float64).ravel():
                    if i == 0:
                        scores.append(value)
                        names.append(name)
                    else:
                        scores[idx] += value
                    log.info("Batch %d, %s = %g", i, name, value)
                    idx += 1
        log.info("Loss: %g", loss / iterations)
        for name, total in zip(names, scores):
            mean = total / iterations
            weight = net.blob_loss_weights.get(name, 0.0)
            extra = f" (* {weight:g} = {weight * mean:g} loss)" if weight else ""
            log.info("%s = %g%s", name, mean, extra)
    finally:
        net.close()
