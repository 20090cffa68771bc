"""cuDNN convolutions for 2-D Convolution layers (``forward``, ``backward_data``, ``backward_filter``), used
where cuDNN is present and measured faster: ``Chooser`` times them against the GEMM path.
"""
import numpy

from .. import backend

_state = {"available": None}


def available():
    """Whether CuPy's cuDNN bindings import and the cuDNN library answers (checked once).

    The functions here need CuPy's ``cupyx.cudnn`` (CuPy 13 and earlier ship it; CuPy 14 dropped cuDNN).
    """
    if _state["available"] is None:
        ok = False
        if backend.cupy is not None:
            try:
                import cupy.cuda.cudnn as libcudnn
                import cupyx.cudnn  # noqa: F401
                ok = libcudnn.getVersion() > 0
            except Exception:
                ok = False
        _state["available"] = ok
    return _state["available"]


def applies(x, kernel, stride, pad, dilation):
    """Whether cuDNN computes exactly this layer: CuPy float arrays (N, C, H, W) with non-negative spans.

    Caffe's output size truncates toward zero when a kernel is larger than the padded input; cuDNN rounds
    down: such layers are left to the GEMM path.
    """
    if not (available() and backend.cupy is not None and isinstance(x, backend.cupy.ndarray)):
        return False
    if x.ndim != 4 or x.dtype not in (numpy.float32, numpy.float64) or len(kernel) != 2:
        return False
    return all(size + 2 * p - (d * (k - 1) + 1) >= 0
               for size, k, p, d in zip(x.shape[2:], kernel, pad, dilation))


def forward(x, w, b, y, stride, pad, dilation, groups):
    """y = correlate(x, w) (+ b, shape (O,), or None), overwritten.

    Caffe's Convolution is cuDNN's CROSS_CORRELATION mode, so (NCHW, grouped):

        forward:          y (N, O, OH, OW) = correlate(x (N, C, H, W), w (O, C/g, kh, kw)) + b
        backward_data:    dx (N, C, H, W)  from dy and w
        backward_filter:  dw (O, C/g, kh, kw) from x and dy

    Each of the three overwrites its output (the layer adds ``dw`` into the weight's diff itself).
    """
    import cupyx.cudnn
    cupyx.cudnn.convolution_forward(x, w, b, y, tuple(pad), tuple(stride), tuple(dilation), int(groups),
                                    auto_tune=True, tensor_core="auto")
    return y


def backward_data(w, dy, dx, stride, pad, dilation, groups):
    """dx (N, C, H, W), overwritten, from dy (N, O, OH, OW) and w."""
    import cupyx.cudnn
    cupyx.cudnn.convolution_backward_data(w, dy, None, dx, tuple(pad), tuple(stride), tuple(dilation),
                                          int(groups), deterministic=True, auto_tune=True, tensor_core="auto")
    return dx


def backward_filter(x, dy, dw, stride, pad, dilation, groups):
    """dw (O, C/g, kh, kw), overwritten, from x and dy (deterministic algorithms only)."""
    import cupyx.cudnn
    cupyx.cudnn.convolution_backward_filter(x, dy, dw, tuple(pad), tuple(stride), tuple(dilation), int(groups),
                                            deterministic=True, auto_tune=True, tensor_core="auto")
    return dw


class Chooser:
    """Picks, per key (the layer's shapes and pass), the faster of two ways, timed once on first use.

    It times the cuDNN call against the GEMM path once per shape, at first use, and keeps the faster: cuDNN
    is not always the faster on small or oddly shaped layers.

    ``run(key, cudnn_call, gemm_call)``: each call computes the same result into its output (they must
    overwrite, not accumulate: the first use runs both).  Later uses run only the winner.
    """
    def __init__(self, repeats=3):
        self.repeats = repeats
        self.winner = {}

    def run(self, key, cudnn_call, gemm_call):
        choice = self.winner.get(key)
        if choice is None:
            timings = {name: self._time(call) for name, call in (("gemm", gemm_call), ("cudnn", cudnn_call))}
            choice = self.winner[key] = min(timings, key=timings.get)
            # the last call to run was cuDNN's: its output is already there
            if choice == "cudnn":
                return
        (cudnn_call if choice == "cudnn" else gemm_call)()

    def _time(self, call):
        cupy = backend.cupy
        call()  # warm-up: compilation, cuDNN's own algorithm search, allocations
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(self.repeats):
            call()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop)
