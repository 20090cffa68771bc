"""SoftmaxWithLoss on the GPU: Caffe's SoftmaxLossForwardGPU / SoftmaxLossBackwardGPU kernels, run by
``forward`` (per-position losses and counts) and ``backward`` (the bottom's gradient) on CuPy arrays.
"""
import numpy

from . import kernels

SOURCE = "softmax_loss"
#: The count a position with an out-of-range label gets.
BAD_LABEL = 2
FLT_MIN = "1.175494350822287507969e-38"


@kernels.register_source(SOURCE)
def _source(dtype):
    return r"""
extern "C" __global__ void softmax_loss_forward(
    const int n, const T* prob, const T* labels, const int classes, const int inner,
    const int has_ignore, const long long ignore_label, T* loss, T* counts) {
  CUDA_KERNEL_LOOP(index, n) {
    const int o = index / inner;
    const int i = index % inner;
    const long long label = (long long)labels[index];
    if (has_ignore && label == ignore_label) {
      loss[index] = 0;
      counts[index] = 0;
    } else if (label < 0 || label >= classes) {
      loss[index] = 0;
      counts[index] = 2;
    } else {
      const T p = prob[((long long)o * classes + label) * inner + i];
      // numpy.maximum's rule: NaN propagates (CUDA's max would drop it)
      loss[index] = -log((p != p || p > T(FLT_MIN_VALUE)) ? p : T(FLT_MIN_VALUE));
      counts[index] = 1;
    }
  }
}

extern "C" __global__ void softmax_loss_backward(
    const int n, const T* prob, const T* labels, const int classes, const int inner,
    const int has_ignore, const long long ignore_label, const T* scale, T* dx) {
  CUDA_KERNEL_LOOP(index, n) {
    const int i = index % inner;
    const int c = (index / inner) % classes;
    const int o = index / (inner * classes);
    const long long label = (long long)labels[o * inner + i];
    if (has_ignore && label == ignore_label) {
      dx[index] = 0;
    } else {
      dx[index] = (prob[index] - (c == label ? T(1) : T(0))) * scale[0];
    }
  }
}
""".replace("FLT_MIN_VALUE", FLT_MIN)


def forward(prob, labels, classes, inner, ignore_label, loss, counts):
    """Per-position ``loss`` and ``counts`` (outer * inner each) from ``prob`` (outer, C, inner).

    prob: (outer, C, inner) softmax probabilities; labels: outer * inner values (floats, truncated to
    integers as ``static_cast<int>`` does).  For each position (o, i) with label l:

        loss[o, i] = -log(max(prob[o, l, i], FLT_MIN)),  count[o, i] = 1

    an ignored label gives 0 and 0; a label outside [0, C) gives count 2 (``BAD_LABEL``: the caller raises).
    """
    n = loss.size
    kernels.launch(SOURCE, prob.dtype, "softmax_loss_forward", n,
                   (n, kernels.contiguous(prob), kernels.contiguous(labels), classes, inner,
                    ignore_label is not None, _ignore(ignore_label), loss, counts))


def backward(prob, labels, classes, inner, ignore_label, scale, dx):
    """dx (outer, C, inner), overwritten; ``scale`` a one-element device array (loss weight / normalizer).

    For each position (o, i) with label l (labels truncated to integers as in ``forward``):

        dx[o, c, i] = (prob[o, c, i] - (c == l)) * scale   (0 for ignored positions)

    ``scale`` is read from the device array, so that nothing waits for the GPU to finish between forward
    and backward.
    """
    kernels.launch(SOURCE, prob.dtype, "softmax_loss_backward", dx.size,
                   (dx.size, kernels.contiguous(prob), kernels.contiguous(labels), classes, inner,
                    ignore_label is not None, _ignore(ignore_label), kernels.contiguous(scale), dx))


def _ignore(ignore_label):
    return numpy.int64(0 if ignore_label is None else ignore_label)
