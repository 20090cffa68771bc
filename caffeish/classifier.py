"""pycaffe's Classifier: a Net that scores images, by centre crop or by 10 oversampled crops; and
``image_transformer``, the input preprocessing it shares with the Detector.
"""
import numpy

from . import io as cio
from .errors import CaffeishError
from .net import TEST, Net


def image_transformer(net, what, mean, input_scale, raw_scale, channel_swap):
    """``(input name, its shape, Transformer)`` for a deploy ``net`` taking N x C x H x W images, set up as
    pycaffe's Classifier and Detector do (H x W x C images in, the given mean and scales)."""
    if not net.inputs:
        raise CaffeishError(f"net '{net.name}' has no input blob: a {what} needs a deploy net (an Input layer "
                            "giving the image shape)")
    in_ = net.inputs[0]
    shape = tuple(net.blobs[in_].data.shape)
    if len(shape) != 4:
        raise CaffeishError(f"the net's input '{in_}' has shape {shape}; a {what} needs N x C x H x W")
    transformer = cio.Transformer({in_: shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return in_, shape, transformer


class Classifier(Net):
    """A Net that classifies images: resize to ``image_dims``, crop to the input size, preprocess, forward.

    ``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)`` builds the TEST net with its weights and a ``Transformer``
    for its first input (transpose (2, 0, 1), then the options given).  ``predict(inputs, oversample=True)``
    takes H x W x K images (as ``caffeish.io.load_image`` gives them) and returns N x classes scores.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_, shape, self.transformer = image_transformer(self, "Classifier", mean, input_scale, raw_scale,
                                                         channel_swap)
        self.crop_dims = numpy.array(shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims
        dims = tuple(int(d) for d in image_dims)
        if len(dims) != 2 or dims[0] < self.crop_dims[0] or dims[1] < self.crop_dims[1]:
            raise CaffeishError(f"image_dims {tuple(image_dims)} must be (height, width) at least the net's input "
                                f"size {tuple(int(d) for d in self.crop_dims)}, which is cut from them")

    def _crops(self, inputs, oversample):
        """The preprocessed net inputs for ``inputs``: 10 per image with ``oversample``, else 1 (the centre)."""
        if len(inputs) == 0:
            raise CaffeishError("predict needs at least one image")
        dims = tuple(int(d) for d in self.image_dims)
        input_ = numpy.zeros((len(inputs), dims[0], dims[1], numpy.shape(inputs[0])[2]), dtype=numpy.float32)
        for ix, in_ in enumerate(inputs):
            if numpy.ndim(in_) != 3 or numpy.shape(in_)[2] != input_.shape[3]:
                raise CaffeishError(f"predict takes H x W x K images with one K; image {ix} has shape "
                                    f"{numpy.shape(in_)}, image 0 has {input_.shape[3]} channels")
            input_[ix] = cio.resize_image(in_, dims)
        if oversample:
            input_ = cio.oversample(input_, self.crop_dims)
        else:
            center = numpy.array(dims) / 2.0
            crop = numpy.tile(center, (1, 2))[0] + numpy.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_name = self.inputs[0]
        caffe_in = numpy.zeros(numpy.array(input_.shape)[[0, 3, 1, 2]], dtype=numpy.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(in_name, in_)
        return caffe_in

    def predict(self, inputs, oversample=True):
        """N x classes predictions for N H x W x K images: the output of the centre crop, or with
        ``oversample`` the mean over the 4 corner and centre crops and their mirrors."""
        caffe_in = self._crops(inputs, oversample)
        out = self.forward_all(**{self.inputs[0]: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
