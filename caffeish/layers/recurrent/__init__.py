"""Recurrent layers: RNN, LSTM and LSTMUnit, computed step by step over the time axis."""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types
