"""Stop training at the first non-finite loss or gradient, naming where it went bad.

The check per iteration is cheap (the loss, and one sum per parameter diff);
only when it fails is the net re-run layer by layer to find the first layer
whose output, input gradient or parameter gradient is NaN or Inf.
"""
import math

from .. import backend
from ..errors import CaffeishError


def _finite(array):
    xp = backend.get_array_module(array)
    return bool(xp.isfinite(array).all())


def check_finite(net, loss, iteration):
    bad_grad = None
    if math.isfinite(loss):
        for blob in net.learnable_params:
            if not math.isfinite(float(blob.diff.sum())):
                bad_grad = blob
                break
        if bad_grad is None:
            return
    where = first_bad_place(net)
    what = f"the loss is {loss:g}" if not math.isfinite(loss) else "a gradient is not finite"
    raise CaffeishError(f"training stopped at iteration {iteration}: {what}; {where}. The last snapshot written "
                        "is left as it was. Lower base_lr, set clip_gradients, or check the data for bad values.")


def first_bad_place(net):
    """Re-run forward and backward and describe the first NaN/Inf in data, then diffs (Caffe's debug_info order)."""
    for lid, layer in enumerate(net.layers):
        layer.Forward(net.bottom_vecs[lid], net.top_vecs[lid])
        for blob in net.top_vecs[lid]:
            if not _finite(blob.data):
                return f"the first layer whose output went bad is '{layer.name}' ({layer.type}), top blob '{blob.name}'"
    net.clear_param_diffs()
    net.backward_from_to()
    for lid in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[lid]
        if not net.layer_need_backward[lid]:
            continue
        for j, blob in enumerate(layer.blobs):
            if not _finite(blob.diff):
                return f"the first layer whose gradient went bad is '{layer.name}' ({layer.type}), parameter {j}"
        for j, blob in enumerate(net.bottom_vecs[lid]):
            if net.bottom_need_backward[lid][j] and not _finite(blob.diff):
                return (f"the first layer whose gradient went bad is '{layer.name}' ({layer.type}), "
                        f"bottom blob '{blob.name}'")
    return "re-running the iteration found no bad value (it may depend on the random draw)"
