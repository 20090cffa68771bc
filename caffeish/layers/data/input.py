"""Input: tops whose shapes are declared in ``input_param.shape`` and whose data the user sets."""
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("Input")
class InputLayer(Layer):
    """Tops: one per ``input_param.shape`` (or one shape for all). No backward."""
    min_top = 1
    exact_num_bottom = 0
    has_backward = False

    def layer_setup(self, bottom, top):
        shapes = list(self.param.input_param.shape)
        if len(shapes) not in (1, len(top)):
            raise CaffeishError(f"input_param must give one shape, or one per top ({len(top)} tops), "
                                f"but gives {len(shapes)}")
        for i, blob in enumerate(top):
            blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # the user reshapes inputs; Net.forward(**inputs) does it for them

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass
