"""Loss layers, and Accuracy (which reads the same scores and labels): SoftmaxWithLoss, EuclideanLoss,
SigmoidCrossEntropyLoss, HingeLoss, InfogainLoss, MultinomialLogisticLoss, ContrastiveLoss.
"""
from . import accuracy, euclidean_loss, losses, softmax_loss  # noqa: F401  (registers the layer types)
