"""pycaffe's conveniences on ``Net``: batched forward/backward over many inputs, weight sharing between
nets, HDF5 weights, and the per-layer callbacks pycaffe scripts hang timers and reducers on.

``PycaffeNet`` is a base class of ``caffeish.Net``; everything here is built on the Net's own
``forward``/``backward``, so the core stays in net.py.
"""
from collections import OrderedDict

import numpy

from . import backend
from .errors import CaffeishError


class PycaffeNet:
    """The pycaffe methods of ``Net`` that need nothing of its internals but its blobs and layers."""

    # -- batches of any length ------------------------------------------------------------------------
    def _batch(self, blobs):
        """Yield ``{name: batch}`` dicts cutting ``blobs`` (``{name: array}`` of equal length) into batches of
        the net's batch size; the last batch is padded with zeros to full size, as pycaffe does."""
        if not blobs:
            return
        lengths = {name: len(value) for name, value in blobs.items()}
        if len(set(lengths.values())) != 1:
            raise CaffeishError(f"the arrays given hold different numbers of items: {lengths}")
        num = next(iter(lengths.values()))
        batch_size = self.blobs[next(iter(blobs))].shape[0]
        for name in blobs:
            if self.blobs[name].shape[0] != batch_size:
                raise CaffeishError(f"blob '{name}' has batch size {self.blobs[name].shape[0]}, not {batch_size} "
                                    "as the other inputs")
        for start in range(0, num, batch_size):
            batch = {}
            for name, value in blobs.items():
                part = numpy.asarray(value[start:start + batch_size])
                if len(part) < batch_size:
                    padding = numpy.zeros((batch_size - len(part),) + part.shape[1:], dtype=part.dtype)
                    part = numpy.concatenate([part, padding])
                batch[name] = part
            yield batch

    def forward_all(self, blobs=None, **kwargs):
        """Run forward over inputs of any length (``name=array``, first axis = items), batch by batch.

        Returns ``{blob: array}`` for the net's outputs and ``blobs``, each with one row per item given.
        """
        _check_names(self, kwargs, self.inputs, "input")
        outs = OrderedDict((name, []) for name in dict.fromkeys(list(self.outputs) + list(blobs or ())))
        for batch in self._batch(kwargs):
            result = self.forward(blobs=blobs, **batch)
            for name in outs:
                outs[name].extend(backend.to_cpu(result[name]).copy())
        num = len(next(iter(kwargs.values()))) if kwargs else None
        return {name: numpy.asarray(rows)[:num] for name, rows in outs.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward and backward over inputs of any length; ``kwargs`` holds the inputs and the outputs' diffs.

        Returns ``(outputs, diffs)``: ``{blob: data}`` for the outputs and ``blobs``, ``{blob: diff}`` for the
        inputs and ``diffs``, each with one row per item given.
        """
        inputs = {k: v for k, v in kwargs.items() if k in self.inputs}
        top_diffs = {k: v for k, v in kwargs.items() if k in self.outputs}
        unknown = sorted(set(kwargs) - set(inputs) - set(top_diffs))
        if unknown:
            raise CaffeishError(f"forward_backward_all: {', '.join(unknown)} is neither an input "
                                f"({', '.join(self.inputs) or 'none'}) nor an output ({', '.join(self.outputs)}) "
                                f"of net '{self.name}'")
        outs = OrderedDict((n, []) for n in dict.fromkeys(list(self.outputs) + list(blobs or ())))
        grads = OrderedDict((n, []) for n in dict.fromkeys(list(self.inputs) + list(diffs or ())))
        forward_batches = self._batch(inputs) if inputs else iter(())
        backward_batches = self._batch(top_diffs) if top_diffs else iter(())
        while True:
            fb, bb = next(forward_batches, None), next(backward_batches, None)
            if fb is None and bb is None:
                break
            result = self.forward(blobs=blobs, **(fb or {}))
            grad = self.backward(diffs=diffs, **(bb or {}))
            for name in outs:
                outs[name].extend(backend.to_cpu(result[name]).copy())
            for name in grads:
                grads[name].extend(backend.to_cpu(grad[name]).copy())
        num = len(next(iter(kwargs.values()))) if kwargs else None
        return ({n: numpy.asarray(v)[:num] for n, v in outs.items()},
                {n: numpy.asarray(v)[:num] for n, v in grads.items()})

    # -- weights ----------------------------------------------------------------------------------------
    def share_with(self, other):
        """Use ``other``'s parameter data for the layers of the same name (Caffe's ShareTrainedLayersWith):
        a test net that follows a training net's weights without copies."""
        mine = OrderedDict(zip(self._layer_names, self.layers))
        for name, source in zip(other._layer_names, other.layers):
            target = mine.get(name)
            if target is None or not source.blobs:
                continue
            if len(source.blobs) != len(target.blobs):
                raise CaffeishError(f"share_with: layer '{name}' has {len(target.blobs)} parameter blobs here but "
                                    f"{len(source.blobs)} in net '{other.name}'")
            for j, (src, dst) in enumerate(zip(source.blobs, target.blobs)):
                if src.shape != dst.shape:
                    raise CaffeishError(f"share_with: param {j} of layer '{name}' has shape {dst.shape} here but "
                                        f"{src.shape} in net '{other.name}'")
                dst.share_data(src)

    def save_hdf5(self, filename, write_diff=False):
        """Write the parameters in Caffe's HDF5 layout (``data/<layer>/<index>``), atomically."""
        from .weights import save_net_hdf5
        save_net_hdf5(self, filename, write_diff)

    def load_hdf5(self, filename):
        """Copy parameters by layer name from a file ``save_hdf5`` (or Caffe) wrote."""
        from .weights import load_net_hdf5
        load_net_hdf5(self, filename)

    # -- callbacks (pycaffe's net.before_forward(fn) and friends; fn gets the layer index) ----------------
    def before_forward(self, callback):
        self._callbacks["before_forward"].append(callback)

    def after_forward(self, callback):
        self._callbacks["after_forward"].append(callback)

    def before_backward(self, callback):
        self._callbacks["before_backward"].append(callback)

    def after_backward(self, callback):
        self._callbacks["after_backward"].append(callback)

    # -- pycaffe's private views that scripts use anyway --------------------------------------------------
    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _inputs(self):
        return [list(self.blobs).index(n) for n in self.inputs]

    @property
    def _outputs(self):
        return [list(self.blobs).index(n) for n in self.outputs]

    @property
    def _blob_loss_weights(self):
        return list(self.blob_loss_weights.values())


def _check_names(net, given, known, what):
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise CaffeishError(f"{', '.join(repr(n) for n in unknown)} is not an {what} of net '{net.name}' "
                            f"(its {what}s: {', '.join(known) or 'none'})")
