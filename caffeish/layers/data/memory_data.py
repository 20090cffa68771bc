"""The MemoryData layer (Caffe's MemoryDataLayer): batches from arrays (or Datums) handed over by the program."""
import logging

import numpy

from ... import backend
from ... import io as cio
from ...data.transform import DataTransformer
from ...errors import CaffeishError
from ...layer import Layer, register_layer

log = logging.getLogger("caffeish")


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """MemoryData: batches from arrays handed over by the program (Caffe's MemoryDataLayer).

    ``memory_data_param``: ``batch_size``, ``channels``, ``height``, ``width``.  Tops: ``data``
    (batch_size, channels, height, width) and ``label`` (batch_size,).

    ``set_arrays(data, labels)`` (what ``Net.set_input_arrays`` calls, as pycaffe's) takes data of
    shape (N, channels, height, width) and N labels, N a multiple of ``batch_size``; each forward then
    serves the next ``batch_size`` rows, wrapping around.  As in Caffe, arrays given this way are used
    as they are (Caffe's ``Reset`` does not transform, and warns if there is a ``transform_param``);
    ``add_datum_vector(datums)`` goes through the DataTransformer (mirror, crop, mean, scale), as
    Caffe's ``AddDatumVector`` does, and needs the previous data to have been served completely.
    """
    exact_num_bottom = 0
    exact_num_top = 2
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = (
            int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise CaffeishError("memory_data_param must give positive batch_size, channels, height and width "
                                f"(got {self.batch_size}, {self.channels}, {self.height}, {self.width})")
        self.transformer = None
        self.data = self.labels = None
        self.n = self.pos = 0
        self._restored_pos = None
        self.has_new_data = False
        top[0].reshape(self.batch_size, self.channels, self.height, self.width)
        top[1].reshape(self.batch_size)

    def reshape(self, bottom, top):
        pass

    # -- feeding --------------------------------------------------------------------------------------
    def set_arrays(self, data, labels):
        """pycaffe's set_input_arrays: ``data`` (N, C, H, W), ``labels`` (N,) or (N, 1, 1, 1); N % batch_size == 0."""
        data_shape, label_shape = tuple(numpy.shape(data)), tuple(numpy.shape(labels))
        expected = (self.channels, self.height, self.width)
        if len(data_shape) != 4 or data_shape[1:] != expected:
            raise CaffeishError(f"set_input_arrays: the data array has shape {data_shape}, but this MemoryData layer "
                                f"takes (N, {self.channels}, {self.height}, {self.width})",
                                layer=self.name, layer_type=self.type)
        n = data_shape[0]
        if not label_shape or label_shape[0] != n or int(numpy.prod(label_shape[1:], dtype=numpy.int64)) != 1:
            raise CaffeishError(f"set_input_arrays: the labels have shape {label_shape}; give one label per "
                                f"example, shape ({n},)", layer=self.name, layer_type=self.type)
        self._reset(backend.to_current(data, self.dtype),
                    backend.to_current(numpy.reshape(backend.to_cpu(labels), (n,)), self.dtype), n)
        if self.param.HasField("transform_param"):
            log.warning("MemoryData layer '%s' does not transform arrays given by set_input_arrays "
                        "(as Caffe's Reset)", self.name)

    def add_datum_vector(self, datums):
        """Caffe's AddDatumVector: Datums transformed into (C, H, W) images, with their labels."""
        if self.has_new_data:
            raise CaffeishError("cannot add data until the current data has been consumed",
                                layer=self.name, layer_type=self.type)
        datums = list(datums)
        n = len(datums)
        if n == 0:
            raise CaffeishError("there is no Datum to add", layer=self.name, layer_type=self.type)
        self._check_multiple(n)
        if self.transformer is None:
            self.transformer = DataTransformer(self.param.transform_param, self.phase, self.dtype)
        images = [self.transformer.decode(d) for d in datums]
        data = self.transformer.transform_list(images, backend.rng())
        if data.shape[1:] != (self.channels, self.height, self.width):
            raise CaffeishError(f"the transformed Datums have shape {data.shape[1:]}, but this layer takes "
                                f"({self.channels}, {self.height}, {self.width})", layer=self.name,
                                layer_type=self.type)
        labels = numpy.asarray([d.label for d in datums], dtype=self.dtype)
        self._reset(backend.to_current(data, self.dtype), backend.to_current(labels, self.dtype), n)
        self.has_new_data = True

    def add_arrays(self, images, labels):
        """Caffe's AddMatVector: uint8 or float images (C, H, W) transformed like Datums."""
        labels = numpy.asarray(labels).reshape(-1)
        images = list(images)
        if len(images) != labels.size:
            raise CaffeishError(f"{len(images)} images but {labels.size} labels", layer=self.name,
                                layer_type=self.type)
        self.add_datum_vector([cio.array_to_datum(numpy.asarray(im), int(lab)) for im, lab in zip(images, labels)])

    def _check_multiple(self, n):
        if n % self.batch_size:
            raise CaffeishError(f"set_input_arrays: the number of examples ({n}) must be a multiple of the batch "
                                f"size ({self.batch_size})", layer=self.name, layer_type=self.type)

    def _reset(self, data, labels, n):
        if n == 0:
            raise CaffeishError("set_input_arrays: the arrays hold no examples", layer=self.name,
                                layer_type=self.type)
        self._check_multiple(n)
        pos, self._restored_pos = self._restored_pos, None
        self.data, self.labels, self.n = data, labels, n
        self.pos = pos if pos is not None and pos < n else 0

    # -- running --------------------------------------------------------------------------------------
    def forward(self, bottom, top):
        if self.data is None:
            raise CaffeishError("MemoryData has no data yet: call Net.set_input_arrays(data, labels) first")
        b = self.batch_size
        top[0].reshape(b, self.channels, self.height, self.width)
        top[1].reshape(b)
        top[0].data = self.data[self.pos:self.pos + b]
        top[1].data = self.labels[self.pos:self.pos + b]
        self.pos = (self.pos + b) % self.n
        if self.pos == 0:
            self.has_new_data = False

    def backward(self, top, propagate_down, bottom):
        pass

    def get_state(self):
        return {"type": self.type, "pos": int(self.pos)}

    def set_state(self, state):
        pos = int(state.get("pos", 0))
        if pos < 0 or pos % self.batch_size or (self.n and pos >= self.n):
            raise CaffeishError(f"the saved position {pos} does not fit batches of {self.batch_size}"
                                + (f" in {self.n} examples" if self.n else ""), layer=self.name, layer_type=self.type)
        self.pos = pos
        if self.data is None:
            self._restored_pos = pos  # applied when the arrays arrive
