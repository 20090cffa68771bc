"""The Tile layer (Caffe's TileLayer): the bottom repeated ``tiles`` times along one axis."""
from ...errors import CaffeishError
from ...layer import Layer, register_layer


@register_layer("Tile")
class TileLayer(Layer):
    """Tile: Caffe's repetition of the bottom ``tiles`` times along ``tile_param.axis`` (default 1).

    top: the bottom's shape with axis ``axis`` multiplied by ``tiles``; the whole block from ``axis`` on is
    repeated (``[a, b] -> [a, b, a, b]``).  Backward sums the gradients of the tiles.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            raise CaffeishError("tile_param needs the number of tiles (tiles)")
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise CaffeishError(f"the number of tiles must be positive, got {self.tiles}")

    def reshape(self, bottom, top):
        b = bottom[0]
        self.axis = b.canonical_axis(self.param.tile_param.axis)
        if top[0] is b:
            raise CaffeishError("Tile cannot run in place; give its top a name of its own")
        self.outer = b.count_range(0, self.axis)
        shape = list(b.shape)
        shape[self.axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.outer, 1, -1)
        top[0].data.reshape(self.outer, self.tiles, -1)[...] = x

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self.outer, self.tiles, -1)
            bottom[0].diff[...] = dy.sum(axis=1).reshape(bottom[0].shape)
