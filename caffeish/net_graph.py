"""Graph rewrites done on a NetParameter before a Net is built (Caffe's rules).

``filter_net`` keeps the layers whose include/exclude rules match a NetState;
``insert_splits`` makes fan-out explicit by adding Split layers, so that every
blob has one consumer and a layer may overwrite its bottom's diff.
"""
from .errors import CaffeishError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param, state):
    """A copy of ``param`` holding only the layers that ``state`` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise CaffeishError(f"layer '{layer.name}': specify either include rules or exclude rules, not both")
        if layer.include:
            keep = any(state_meets_rule(state, r) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(param):
    """A copy of ``param`` with a Split layer after every top read more than once.

    A top with a non-zero loss weight that is also read by other layers counts as
    one more consumer; its split's first output carries the loss weight.
    """
    last_top = {}                 # blob name -> (layer index, top index) that wrote it last
    source_of = {}                # (layer index, bottom index) -> (layer index, top index)
    consumers = {}                # (layer index, top index) -> number of readers
    loss_weight = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise CaffeishError(f"layer '{layer.name}' (type {layer.type}): unknown bottom blob '{name}' "
                                    f"(bottom index {j}); no earlier layer produces it")
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
            if j < len(layer.loss_weight):
                loss_weight[(i, j)] = layer.loss_weight[j]
                if layer.loss_weight[j]:
                    consumers[(i, j)] = consumers.get((i, j), 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = {}
    for i, layer in enumerate(param.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                new.bottom[j] = split_blob_name(param.layer[src[0]].name, name, src[1], k)
                next_split[src] = k + 1
        for j, name in enumerate(layer.top):
            count = consumers.get((i, j), 0)
            if count <= 1:
                continue
            weight = loss_weight.get((i, j), 0.0)
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            for k in range(count):
                split.top.append(split_blob_name(layer.name, name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                new.loss_weight[j] = 0.0
                next_split[(i, j)] = 1  # split output 0 carries the loss
    return out
