"""Recurrent layers: RNN, LSTM and LSTMUnit, computed step by step over the time axis."""
from . import recurrent  # noqa: F401  (registers the layer types)
