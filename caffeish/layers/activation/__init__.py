"""Activation (neuron) layers: element-wise functions of one bottom, top of the same shape, mostly in place.

ReLU, PReLU, Sigmoid, TanH, Dropout, and ELU, Swish, Clip, AbsVal, BNLL, Power, Exp, Log, Threshold.
"""
from . import elementwise, neuron, prelu, relu  # noqa: F401  (registers the layer types)
