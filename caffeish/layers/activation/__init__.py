"""Activation (neuron) layers: element-wise functions of one bottom, top of the same shape, mostly in place.

ReLU, PReLU, Sigmoid, TanH, Dropout, and ELU, Swish, Clip, AbsVal, BNLL, Power, Exp, Log, Threshold.
"""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types
