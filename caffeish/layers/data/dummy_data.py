"""The DummyData layer (Caffe's DummyDataLayer): tops of fixed shapes filled by fillers, for tests and
benchmarks.
"""
from ... import fillers
from ...errors import CaffeishError
from ...layer import Layer, register_layer
from ...proto import caffe_pb2


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """DummyData: tops of fixed shapes filled by fillers (for tests and benchmarks).

    ``dummy_data_param.shape`` (once for all tops, or once per top) or the legacy
    ``num``/``channels``/``height``/``width`` (each once, or once per top).
    ``data_filler``: none (constant 0), one for all tops, or one per top.  As in
    Caffe, tops with a constant filler are filled once at setup and never again;
    the others are refilled on every forward.  No bottoms, no backward.
    """
    exact_num_bottom = 0
    min_top = 1
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise CaffeishError(f"dummy_data_param gives {nf} data_filler; give none, one, or one per top ({n} tops)")
        legacy = {f: list(getattr(p, f)) for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                raise CaffeishError("dummy_data_param gives both shape and the legacy num/channels/height/width; "
                                    "give only one form")
            for field, values in legacy.items():
                if len(values) not in (1, n):
                    raise CaffeishError(f"dummy_data_param must give '{field}' once, or once per top ({n} tops); "
                                        f"it gives it {len(values)} times")
            shapes = [tuple(values[0 if len(values) == 1 else i] for values in legacy.values()) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise CaffeishError(f"dummy_data_param must give 'shape' once, or once per top ({n} tops); "
                                    f"it gives it {len(p.shape)} times")
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        if nf == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        else:
            self.fillers = list(p.data_filler)
        for f in self.fillers:
            fillers.FILLERS.get(f.type, context="dummy_data_param.data_filler")  # unknown types fail at setup
        # Constant tops are filled now and never again; the others on every forward.
        self.refill = [f.type != "constant" for f in self.fillers]
        for i, blob in enumerate(top):
            blob.reshape(shapes[i])
            k = self._filler_index(i)
            if not self.refill[k]:
                fillers.fill(blob, self.fillers[k])

    def _filler_index(self, i):
        return i if len(self.fillers) > 1 else 0

    def reshape(self, bottom, top):
        pass  # shapes are fixed at setup

    def forward(self, bottom, top):
        for i, blob in enumerate(top):
            k = self._filler_index(i)
            if self.refill[k]:
                fillers.fill(blob, self.fillers[k])

    def backward(self, top, propagate_down, bottom):
        pass
