"""Learning-rate policies (Caffe's SGDSolver::GetLearningRate): ``learning_rate`` gives the rate for an
iteration by the solver's ``lr_policy``, one function per policy registered in ``POLICIES``.
"""
import logging
import math

from ..errors import CaffeishError
from ..registry import Registry

log = logging.getLogger("caffeish")
POLICIES = Registry("lr_policy")


def learning_rate(param, it, solver):
    """The rate for iteration ``it``; ``solver.current_step`` advances for multistep.

    ``it`` is the iteration (the number of updates done so far):

        fixed      base_lr
        step       base_lr * gamma ^ floor(it / stepsize)
        exp        base_lr * gamma ^ it
        inv        base_lr * (1 + gamma * it) ^ (-power)
        multistep  base_lr * gamma ^ (number of stepvalues reached)
        poly       base_lr * (1 - it / max_iter) ^ power
        sigmoid    base_lr / (1 + exp(-gamma * (it - stepsize)))
    """
    policy = param.lr_policy
    if not policy:
        raise CaffeishError("the solver gives no lr_policy (Caffe needs one: fixed, step, exp, inv, multistep, "
                            "poly or sigmoid)")
    source = getattr(solver, "source", None)
    try:
        rule = POLICIES.get(policy, context="lr_policy")
    except CaffeishError as e:
        raise e.in_file(source) from None
    try:
        rate = rule(param, it, solver)
        if not math.isfinite(rate):
            raise ArithmeticError(f"it is {rate}")
        return rate
    except CaffeishError as e:
        raise e.in_file(source) from None
    except (ArithmeticError, ValueError) as e:  # math.pow/exp: overflow, a negative base to a fractional power
        raise CaffeishError(f"lr_policy '{policy}' gives no learning rate at iteration {it} ({e}) with base_lr "
                            f"{param.base_lr:g}, gamma {param.gamma:g}, power {param.power:g}, stepsize "
                            f"{param.stepsize}, max_iter {param.max_iter}; check these values", path=source) from None


@POLICIES.register("fixed")
def _fixed(p, it, s):
    return p.base_lr


@POLICIES.register("step")
def _step(p, it, s):
    if p.stepsize <= 0:
        raise CaffeishError("lr_policy 'step' needs a positive stepsize")
    s.current_step = it // p.stepsize
    return p.base_lr * math.pow(p.gamma, s.current_step)


@POLICIES.register("exp")
def _exp(p, it, s):
    return p.base_lr * math.pow(p.gamma, it)


@POLICIES.register("inv")
def _inv(p, it, s):
    return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power)


@POLICIES.register("multistep")
def _multistep(p, it, s):
    if s.current_step < len(p.stepvalue) and it >= p.stepvalue[s.current_step]:
        s.current_step += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, s.current_step)
    return p.base_lr * math.pow(p.gamma, s.current_step)


@POLICIES.register("poly")
def _poly(p, it, s):
    if p.max_iter <= 0:
        raise CaffeishError("lr_policy 'poly' needs a positive max_iter")
    return p.base_lr * math.pow(1.0 - it / p.max_iter, p.power)


@POLICIES.register("sigmoid")
def _sigmoid(p, it, s):
    return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize))))
