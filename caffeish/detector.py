"""pycaffe's Detector: classify windows of images (R-CNN style), each warped to the net's input size,
optionally with context padding around it.
"""
import os

import numpy

from . import io as cio
from .classifier import image_transformer
from .errors import CaffeishError
from .net import TEST, Net


class Detector(Net):
    """A Net that scores windows of images.

    ``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)``; ``detect_windows([(filename, windows), ...])`` with windows
    as ``(ymin, xmin, ymax, xmax)`` rows (the end rows/columns excluded, as pycaffe slices them) returns
    one ``{'window', 'prediction', 'filename'}`` dict per window.  With ``context_pad`` each window is
    grown so that ``context_pad`` pixels of the warped input are context around it, padded with the mean
    where it leaves the image, as R-CNN feature extraction does.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        _, _, self.transformer = image_transformer(self, "Detector", mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Score the given windows of the given images: ``[(filename, windows), ...]`` -> a list of
        ``{'window': window, 'prediction': scores, 'filename': filename}``, in the order given."""
        images_windows = [(name, windows) for name, windows in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = cio.load_image(image_fname).astype(numpy.float32)
            for window in windows:
                window_inputs.append(self._checked_crop(image, window, image_fname))
        if not window_inputs:
            raise CaffeishError("detect_windows was given no windows")
        in_ = self.inputs[0]
        caffe_in = numpy.zeros((len(window_inputs), window_inputs[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                               dtype=numpy.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """Score Selective Search proposals; needs the ``selective_search_ijcv_with_python`` package (and
        MATLAB), as pycaffe does."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise CaffeishError("selective search proposals are not available: the selective_search_ijcv_with_python "
                                "package (which runs MATLAB) is not installed; give the windows yourself with "
                                "detect_windows (caffeish detect --crop-mode list)") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def _checked_crop(self, im, window, name):
        window = numpy.asarray(window)
        if window.shape != (4,):
            raise CaffeishError(f"a window is (ymin, xmin, ymax, xmax), not {window.tolist()}", path=name)
        ymin, xmin, ymax, xmax = (int(v) for v in window)
        h, w = im.shape[:2]
        if not (0 <= ymin < ymax and 0 <= xmin < xmax and ymin < h and xmin < w):
            raise CaffeishError(f"the window (ymin, xmin, ymax, xmax) = {(ymin, xmin, ymax, xmax)} holds no pixels "
                                f"of the {h} x {w} image", path=name)
        return self.crop(im, window)

    def crop(self, im, window):
        """The window ``(ymin, xmin, ymax, xmax)`` of an H x W x K image; with ``context_pad``, the window
        grown by the context, resized so that it fills the input with the context border, mean elsewhere."""
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if self.context_pad:
            box = numpy.array(window, dtype=numpy.float64)
            crop_size = self.blobs[self.inputs[0]].width  # assumes a square input
            scale = crop_size / (1. * crop_size - self.context_pad * 2)
            half_h = (box[2] - box[0] + 1) / 2.
            half_w = (box[3] - box[1] + 1) / 2.
            center = (box[0] + half_h, box[1] + half_w)
            scaled_dims = scale * numpy.array((-half_h, -half_w, half_h, half_w))
            box = numpy.round(numpy.tile(center, 2) + scaled_dims)
            full_h = box[2] - box[0] + 1
            full_w = box[3] - box[1] + 1
            scale_h = crop_size / full_h
            scale_w = crop_size / full_w
            pad_y = int(round(max(0, -box[0]) * scale_h))  # how far the grown box leaves the image
            pad_x = int(round(max(0, -box[1]) * scale_w))
            im_h, im_w = im.shape[:2]
            box = numpy.clip(box, 0., [im_h, im_w, im_h, im_w])
            clip_h = box[2] - box[0] + 1
            clip_w = box[3] - box[1] + 1
            if not (clip_h > 0 and clip_w > 0):
                raise CaffeishError(f"the window {list(window)} with its context lies outside the {im_h} x {im_w} "
                                    "image")
            crop_h = int(round(clip_h * scale_h))
            crop_w = int(round(clip_w * scale_w))
            if pad_y + crop_h > crop_size:
                crop_h = crop_size - pad_y
            if pad_x + crop_w > crop_size:
                crop_w = crop_size - pad_x
            context_crop = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
            context_crop = cio.resize_image(context_crop, (crop_h, crop_w))
            crop = numpy.ones(self.crop_dims, dtype=numpy.float32) * self.crop_mean
            crop[pad_y:(pad_y + crop_h), pad_x:(pad_x + crop_w)] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H x W x K) and the context padding; with context, the mean
        that pads it is taken back to the image's space (channel order and raw scale undone)."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = numpy.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            size = self.blobs[in_].width
            if not 0 < 2 * self.context_pad < size:
                raise CaffeishError(f"context_pad {self.context_pad} leaves no room for the window in the net's "
                                    f"{size}-pixel input (it must be under {size / 2:g})")
            transpose = self.transformer.transpose.get(in_)
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                inv_transpose = [transpose[t] for t in transpose]
                crop_mean = numpy.array(mean)  # a copy
                if crop_mean.dtype.kind != "f":
                    crop_mean = crop_mean.astype(numpy.float64)
                if crop_mean.ndim == 2:  # an H x W mean of a 1-channel input
                    crop_mean = crop_mean[numpy.newaxis]
                crop_mean = crop_mean.transpose(inv_transpose)
                if channel_order is not None:
                    channel_order_inverse = [list(channel_order).index(i) for i in range(crop_mean.shape[2])]
                    crop_mean = crop_mean[:, :, channel_order_inverse]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = numpy.zeros(self.crop_dims, dtype=numpy.float32)
