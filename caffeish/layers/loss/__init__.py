"""Loss layers, and Accuracy (which reads the same scores and labels): SoftmaxWithLoss, EuclideanLoss,
SigmoidCrossEntropyLoss, HingeLoss, InfogainLoss, MultinomialLogisticLoss, ContrastiveLoss.
"""
from ...registry import import_modules

import_modules(__name__, __path__)  # each module registers its layer types
