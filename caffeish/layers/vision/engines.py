"""The one place that picks how Convolution, Deconvolution and Pooling run (Caffe's GetConvolutionLayer and
GetPoolingLayer): an engine per layer and input, chosen when the input's device, dtype or shape changes, with
the reason kept on the engine (``caffeish time`` prints it; logger ``caffeish.engine`` logs each choice).
"""
import logging

import numpy

from ... import im2col
from ...backend import get_array_module
from ...cpu import threads as cpu_threads
from ...cpu.native.direct import DirectConvolution
from ...cuda import cudnn as cuda_cudnn
from ...cuda import im2col as cuda_im2col
from ...cuda import kernels as cuda_kernels
from ...proto import caffe_pb2
from .conv_engines import (CudnnConvolution, GemmConvolution, GemmDeconvolution, ImageThreadsConvolution,
                           NativeConvolution, NativeDeconvolution)
from .pooling_engines import CudaPooling, StochasticPooling, WindowPooling

log = logging.getLogger("caffeish.engine")
#: The compiled direct convolution (``caffeish.cpu.native``) for 2-D layers on numpy arrays where it applies.
NATIVE = True
ENGINE = caffe_pb2.ConvolutionParameter.Engine


def engine_for(layer, x):
    """``layer.engine`` for input ``x`` (the layer reshaped for it): kept while x's module, dtype and shape
    stay, else chosen anew."""
    xp = get_array_module(x)
    key = (xp.__name__, x.dtype.str, tuple(x.shape))
    if layer.engine is None or getattr(layer, "engine_key", None) != key:
        layer.engine = FACTORIES[layer.type](layer, xp, x)
        layer.engine_key = key
        log.debug("%s (%s): %s engine, %s", layer.name, layer.type, layer.engine.name, layer.engine.reason)
    return layer.engine


def convolution_engine(layer, xp, x):
    if xp is numpy:
        if NATIVE:
            direct, why_not = DirectConvolution.plan(
                xp, layer.dtype, layer.num, layer.channels, layer.num_output, layer.group, layer.kernel,
                layer.stride, layer.pad, layer.dilation, layer.spatial, layer.out_shape)
            if direct is not None:
                return NativeConvolution(layer, direct, "2-D on numpy: the compiled direct convolution")
        else:
            why_not = "switched off"
        if cpu_threads.available(xp, layer.num):
            return ImageThreadsConvolution(layer, im2col, f"{layer.num} images over {cpu_threads.num_threads()} "
                                           f"threads, one BLAS thread each (native: {why_not})")
        return GemmConvolution(layer, im2col, f"numpy GEMMs on the BLAS's threads (native: {why_not}; image "
                                              f"threads: {_image_threads_off(layer.num)})")
    wanted = layer.param.convolution_param.engine
    if wanted == ENGINE.CAFFE:
        why_not = "engine: CAFFE asked for"
    elif not cuda_cudnn.available():
        why_not = "cuDNN is not available"
    elif not cuda_cudnn.applies(x, layer.kernel, layer.stride, layer.pad, layer.dilation):
        why_not = "cuDNN takes 2-D float32/float64 layers only"
    else:
        return CudnnConvolution(layer, cuda_im2col, "cuDNN, each pass timed against CUDA im2col + GEMM")
    return GemmConvolution(layer, cuda_im2col, f"CUDA im2col + cuBLAS GEMMs ({why_not})")


def deconvolution_engine(layer, xp, x):
    why_not = "switched off"
    if NATIVE:
        # the convolution this layer transposes: from the top's shape to the bottom's, with the same weights
        direct, why_not = DirectConvolution.plan(
            xp, layer.dtype, layer.num, layer.num_output, layer.channels, layer.group, layer.kernel, layer.stride,
            layer.pad, layer.dilation, layer.out_shape, layer.spatial)
        if direct is not None and direct.covers_data_gradient:
            return NativeDeconvolution(layer, direct, "2-D on numpy: the compiled direct convolution, transposed")
        if direct is not None:
            why_not = "a pad past dilation (k - 1), which the kernels' data gradient does not cover"
    device = "numpy" if xp is numpy else "CuPy"
    return GemmDeconvolution(layer, f"{device} im2col / col2im + GEMMs (native: {why_not})")


def pooling_engine(layer, xp, x):
    method = layer.param.pooling_param.pool
    if method == caffe_pb2.PoolingParameter.STOCHASTIC:
        return StochasticPooling(layer, "STOCHASTIC: Caffe's sampling, on numpy or CuPy arrays")
    if xp is not numpy and cuda_kernels.usable(x):
        return CudaPooling(layer, "Caffe's CUDA pooling kernels")
    why = "numpy arrays" if xp is numpy else f"no CUDA kernel for {x.dtype} or this size"
    return WindowPooling(layer, f"strided window views ({why})")


def _image_threads_off(num):
    if num < 2:
        return "one image"
    if not cpu_threads.ENABLED:
        return "switched off"
    return "the BLAS's thread count cannot be limited"


FACTORIES = {"Convolution": convolution_engine, "Deconvolution": deconvolution_engine, "Pooling": pooling_engine}
