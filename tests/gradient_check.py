"""The shared numerical gradient checker (Caffe's GradientChecker, in Python).

The objective is ``E = sum_i 0.5 * ||top_i||^2`` (or one top, or one element of
one top); its gradient with respect to every bottom element and every parameter
is computed by the layer's backward pass and compared with centred differences

    dE/dx ~= (E(x + h) - E(x - h)) / (2 h)

with a relative tolerance ``threshold * max(|analytic|, |numeric|, 1)``.
Elements whose input lies within ``kink_range`` of ``kink`` (e.g. ReLU's 0) are
skipped, as Caffe does.  Everything runs in float64, and the random generator
is re-seeded before every forward pass so that Dropout masks stay the same.

``recording_cases()`` turns the checker into a recorder: inside it, ``check_gradient`` stores what it was
given (the layer's parameter, bottoms, weights and options: a ``GradientCase``) and checks nothing, so
other tests (tests/gpu: the same layers on numpy and CuPy) reuse every case the gradient checks use.
"""
import contextlib
from dataclasses import dataclass, field

import numpy

from caffeish import backend

#: Checked layer types; tests/test_layer_registry.py fails for a layer missing here.
GRADIENT_CHECKED = set()
FORWARD_CHECKED = set()


def checks_forward(*type_names):
    """Mark a test as this layer type's forward test against a plain reference."""
    FORWARD_CHECKED.update(type_names)
    return lambda fn: fn


def checks_gradient(*type_names):
    """Mark a test as this layer type's gradient check (``fn.gradient_checks`` names the types)."""
    GRADIENT_CHECKED.update(type_names)

    def mark(fn):
        fn.gradient_checks = tuple(type_names)
        return fn
    return mark


@dataclass
class GradientCase:
    """What one ``check_gradient`` call was given, as host arrays (see ``recording_cases``)."""
    param: object            # the layer's LayerParameter
    dtype: object
    bottoms: list            # numpy arrays
    num_top: int
    check_bottom: list
    weights: list = field(default_factory=list)  # the layer's parameter blobs when it came set up, else []
    seed: int = 1701
    test: str = ""           # the test that made it


_RECORDING = []


@contextlib.contextmanager
def recording_cases():
    """Within the block, ``check_gradient`` appends a GradientCase to the yielded list instead of checking."""
    cases = []
    _RECORDING.append(cases)
    try:
        yield cases
    finally:
        _RECORDING.pop()


def _record(layer, bottom, top, check_bottom, seed, setup):
    param = type(layer.param)()
    param.CopyFrom(layer.param)
    _RECORDING[-1].append(GradientCase(
        param=param, dtype=layer.dtype, bottoms=[numpy.array(backend.to_cpu(b.data)) for b in bottom],
        num_top=len(top), check_bottom=list(range(len(bottom)) if check_bottom is None else check_bottom),
        weights=[] if setup else [numpy.array(backend.to_cpu(b.data)) for b in layer.blobs], seed=seed))


def _objective(top, top_id, top_data_id):
    """E and its gradient written into the tops' diffs."""
    loss = 0.0
    for i, blob in enumerate(top):
        blob.diff[...] = 0
        if top_id is None:
            loss += 0.5 * float((blob.data ** 2).sum())
            blob.diff[...] = blob.data
        elif i == top_id:
            flat = blob.data.reshape(-1)
            loss += float(flat[top_data_id])
            blob.diff.reshape(-1)[top_data_id] = 1.0
    return loss


def check_gradient(layer, bottom, top, check_bottom=None, top_id=None, top_data_id=None,
                   stepsize=1e-3, threshold=1e-3, kink=0.0, kink_range=-1.0, seed=1701,
                   check_params=True, setup=True):
    """Compare ``layer``'s backward pass with centred differences.

    ``check_bottom``: indices of bottoms to check (default: all).  Parameters are
    checked when ``check_params``.  Raises AssertionError naming the first bad element.
    """
    if _RECORDING:
        _record(layer, bottom, top, check_bottom, seed, setup)
        return 1
    if setup:
        layer.setup(bottom, top)
    check_bottom = range(len(bottom)) if check_bottom is None else check_bottom
    blobs = [("bottom", i, bottom[i]) for i in check_bottom]
    if check_params:
        blobs += [("param", j, b) for j, b in enumerate(layer.blobs)]
    assert blobs, "nothing to check"
    propagate_down = [i in check_bottom for i in range(len(bottom))]

    def run():
        backend.set_random_seed(seed)
        layer.Forward(bottom, top)
        return _objective(top, top_id, top_data_id)

    # Analytic gradients.
    for b in layer.blobs:
        b.diff[...] = 0
    run()
    layer.backward(top, propagate_down, bottom)
    analytic = [numpy.array(backend.to_cpu(b.diff), copy=True) for _, _, b in blobs]
    checked = 0
    for (kind, index, blob), grad in zip(blobs, analytic):
        flat = blob.data.reshape(-1)
        for k in range(blob.count):
            value = float(flat[k])
            if kink_range >= 0 and kink - kink_range <= abs(value) <= kink + kink_range:
                continue
            flat[k] = value + stepsize
            positive = run()
            flat[k] = value - stepsize
            negative = run()
            flat[k] = value
            numeric = (positive - negative) / (2.0 * stepsize)
            computed = float(grad.reshape(-1)[k])
            scale = max(abs(computed), abs(numeric), 1.0)
            assert abs(computed - numeric) <= threshold * scale, (
                f"{layer.type} '{layer.name}': gradient of {kind} {index} element {k} "
                f"(value {value:.6g}): backward gives {computed:.8g}, centred difference {numeric:.8g}")
            checked += 1
    assert checked, "every element was skipped as a kink"
    return checked


def check_gradient_exhaustive(layer, bottom, top, **kw):
    """Check each element of each top separately (Caffe's CheckGradientExhaustive)."""
    layer.setup(bottom, top)
    for i, blob in enumerate(top):
        for k in range(blob.count):
            check_gradient(layer, bottom, top, top_id=i, top_data_id=k, setup=False, **kw)
