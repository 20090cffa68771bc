"""The ImageData layer (Caffe's ImageDataLayer): batches of image files named in a list, with their labels,
read ahead on a thread (``ImageListReader``).
"""
import numpy

from ... import io as cio
from ...data.transform import DataTransformer, effective_transform_param
from ...errors import CaffeishError
from ...layer import register_layer
from .prefetch import SHUFFLE_STREAM, SKIP_STREAM, PrefetchingDataLayer, Reader, stream_rng


def read_image_list(source):
    """[(path, label, line number)] from a ``path label`` list; a malformed line -> CaffeishError naming it."""
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CaffeishError(f"cannot read the image list: {e.strerror or e}", path=source) from None
    except UnicodeDecodeError:
        raise CaffeishError("the image list is not a text file", path=source) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line.strip():
            continue
        cut = line.rfind(" ")
        if cut <= 0:
            raise CaffeishError(f"line {number}: expected 'path label' (the label after the last space), "
                                f"got {line!r}", path=source)
        name, label = line[:cut], line[cut + 1:]
        try:
            value = int(label)
        except ValueError:
            raise CaffeishError(f"line {number}: the label {label!r} (after the last space) is not an integer",
                                path=source) from None
        entries.append((name, value, number))
    if not entries:
        raise CaffeishError("the image list names no images", path=source)
    return entries


class ImageListReader(Reader):
    """Images of a list in list (or shuffled) order, wrapping around; position = (epoch, index, order)."""

    def __init__(self, source, entries, root, new_height, new_width, is_color, shuffle, batch_size,
                 transformer, dtype):
        self.source, self.entries, self.root = source, entries, root
        self.new_height, self.new_width, self.is_color = new_height, new_width, is_color
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.transformer = transformer
        self.dtype = numpy.dtype(dtype)
        self.size = len(entries)
        self.epoch = self.pos = 0
        self.order = None
        self.order_given = False

    # -- orders -------------------------------------------------------------------------------------------
    def derived_order(self, epoch):
        if not self.shuffle:
            return None
        return stream_rng(self.seed, SHUFFLE_STREAM, epoch).permutation(self.size)

    def index(self, pos):
        return int(self.order[pos]) if self.order is not None else pos

    def read(self, i):
        """Image ``i`` of the list (C, H, W uint8, resized) and its label."""
        name, label, number = self.entries[i]
        path = self.root + name
        try:
            image = cio.read_image_chw_bgr(path, color=self.is_color, height=self.new_height, width=self.new_width)
        except CaffeishError as e:
            raise CaffeishError(f"cannot load image {path} (line {number} of {self.source}): {e.reason}") from None
        return image, label

    # -- Reader ---------------------------------------------------------------------------------------
    def position(self):
        out = {"epoch": self.epoch, "pos": self.pos}
        if self.order_given:
            out["order"] = self.order.tolist()
        return out

    def describe(self, position):
        out = {"epoch": int(position["epoch"]), "pos": int(position["pos"])}
        order = position.get("order")
        if order is None:
            order = self.derived_order(out["epoch"])
            order = None if order is None else order.tolist()
        out["order"] = order
        return out

    def check_position(self, state):
        try:
            epoch, pos = int(state["epoch"]), int(state["pos"])
        except (KeyError, TypeError, ValueError):
            raise CaffeishError("the saved state has no valid 'epoch' and 'pos'") from None
        if not 0 <= pos < self.size:
            raise CaffeishError(f"the saved state's position {pos} is outside the list of {self.size} images")
        out = {"epoch": epoch, "pos": pos}
        order = state.get("order")
        if order is not None:
            order = numpy.asarray(order, dtype=numpy.int64)
            if order.shape != (self.size,) or not numpy.array_equal(numpy.sort(order), numpy.arange(self.size)):
                raise CaffeishError(f"the saved state's 'order' is not a permutation of the {self.size} images")
            derived = self.derived_order(epoch)
            if derived is None or not numpy.array_equal(order, derived):
                out["order"] = order.tolist()
        return out

    def seek(self, position):
        self.epoch, self.pos = int(position["epoch"]), int(position["pos"])
        given = position.get("order")
        self.order_given = given is not None
        self.order = numpy.asarray(given, dtype=numpy.int64) if given is not None else self.derived_order(self.epoch)

    def skip(self, n):
        n = int(n)
        while n > 0:
            step = min(n, self.size - self.pos)
            self.pos += step
            n -= step
            if self.pos >= self.size:
                self.pos = 0
                self.epoch += 1
                self.order, self.order_given = self.derived_order(self.epoch), False

    def load_batch(self, rng):
        images, labels, names = [], [], []
        for _ in range(self.batch_size):
            i = self.index(self.pos)
            image, label = self.read(i)
            images.append(image)
            labels.append(label)
            names.append(self.root + self.entries[i][0])
            self.pos += 1
            if self.pos >= self.size:
                self.pos = 0
                self.epoch += 1
                self.order, self.order_given = self.derived_order(self.epoch), False
            self.stride_skip()
        first = images[0].shape
        for name, image in zip(names, images):
            if image.shape != first and not (self.transformer.crop and image.shape[0] == first[0]):
                raise CaffeishError(f"image {name} has shape {image.shape} (C, H, W), but the batch's first image "
                                    f"{names[0]} has {first}; set new_height/new_width or a crop_size")
        try:
            data = self.transformer.transform_list(images, rng)
        except CaffeishError as e:
            bad = next((n for n, im in zip(names, images) if im.shape != first), names[0])
            raise CaffeishError(f"image {bad}: {e}") from None
        return data, numpy.asarray(labels, dtype=self.dtype)


@register_layer("ImageData")
class ImageDataLayer(PrefetchingDataLayer):
    """ImageData: batches of image files named in a list (Caffe's ImageDataLayer), read ahead on a thread.

    ``image_data_param``: ``source`` (a text file of ``path label`` lines, split at the LAST space, as
    Caffe does), ``root_folder`` (prepended to each path as a plain string, as Caffe does),
    ``new_height``/``new_width`` (resize every image; both or neither), ``is_color`` (false: one gray
    channel), ``shuffle`` (a new order every epoch), ``rand_skip`` (start at a random line in
    ``[0, rand_skip)``), ``batch_size``.  Tops: ``data`` (N, C, H', W') and ``label`` (N,).  In data-parallel
    training each rank reads every N-th image of the (shuffled) list (``set_shard``; see
    ``caffeish.layers.data.prefetch``).

    Images are read as Caffe's ReadImageToCVMat reads them (``caffeish.io.read_image_chw_bgr``): decoded
    with Pillow into OpenCV's pixels (``cv::imread``'s BGR C x H x W uint8, or its grey), resized exactly as
    ``cv::resize`` with INTER_LINEAR does (``caffeish.imgproc.resize_linear``), then go through the
    DataTransformer (``transform_param``; the deprecated ``image_data_param``
    ``scale``/``mean_file``/``crop_size``/``mirror`` are honoured when there is no ``transform_param``).
    """
    exact_num_top = 2

    def make_reader(self, seed, top):
        p = self.param.image_data_param
        if not p.source:
            raise CaffeishError("image_data_param.source is not set (the list of images and labels)")
        if p.batch_size <= 0:
            raise CaffeishError(f"image_data_param.batch_size must be positive, not {p.batch_size}")
        if (p.new_height > 0) != (p.new_width > 0):
            raise CaffeishError(f"image_data_param.new_height ({p.new_height}) and new_width ({p.new_width}) "
                                "must be set together")
        transformer = DataTransformer(effective_transform_param(self.param, p, "image_data_param"),
                                      self.phase, self.dtype)
        reader = ImageListReader(p.source, read_image_list(p.source), p.root_folder, int(p.new_height),
                                 int(p.new_width), bool(p.is_color), bool(p.shuffle), int(p.batch_size),
                                 transformer, self.dtype)
        reader.seed = seed
        reader.seek({"epoch": 0, "pos": 0})
        if p.rand_skip:
            reader.pos = int(stream_rng(seed, SKIP_STREAM).integers(p.rand_skip)) % reader.size
        image, _ = reader.read(reader.index(reader.pos))
        try:
            shape = transformer.output_shape(image.shape)
        except CaffeishError as e:
            raise CaffeishError(f"image {p.root_folder + reader.entries[reader.index(reader.pos)][0]}: {e}") from None
        return reader, [(p.batch_size,) + shape, (p.batch_size,)]
