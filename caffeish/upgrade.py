"""Caffe's upgrade path for old net and solver files (``src/caffe/util/upgrade_proto.cpp``): ``upgrade_net`` and
``upgrade_solver`` bring a NetParameter or SolverParameter to the current format, logging what they upgraded.

Where Caffe would crash (LOG(FATAL)), or would silently drop part of the file, these raise one ``CaffeishError``
paragraph instead.
"""
import difflib
import logging
import re

from .errors import CaffeishError
from .proto import caffe_pb2

log = logging.getLogger("caffeish")

V1 = caffe_pb2.V1LayerParameter

#: Every V1 ``LayerType`` enum name, and the ``type`` string the current format uses for it.
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
#: The same, by enum number.
V1_TYPES = {V1.LayerType.Value(name): type_ for name, type_ in V1_TYPE_NAMES.items()}

#: V0 ``type`` strings and the V1 enum each became (Caffe's UpgradeV0LayerType).
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

_DATA_SOURCES = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                 "window_data": "window_data_param"}
#: V0 field -> {V0 type: (V1 sub-message, its field, how)}; "set" a scalar, "add" to a repeated field,
#: "copy" a message.  A V0 field given for a type not listed here does not apply (Caffe logs an error).
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output", "set"),
                   "innerproduct": ("inner_product_param", "num_output", "set")},
    "biasterm": {"conv": ("convolution_param", "bias_term", "set"),
                 "innerproduct": ("inner_product_param", "bias_term", "set")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", "copy"),
                      "innerproduct": ("inner_product_param", "weight_filler", "copy")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", "copy"),
                    "innerproduct": ("inner_product_param", "bias_filler", "copy")},
    "pad": {"conv": ("convolution_param", "pad", "add"), "pool": ("pooling_param", "pad", "set")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", "add"),
                   "pool": ("pooling_param", "kernel_size", "set")},
    "group": {"conv": ("convolution_param", "group", "set")},
    "stride": {"conv": ("convolution_param", "stride", "add"), "pool": ("pooling_param", "stride", "set")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", "set")},
    "local_size": {"lrn": ("lrn_param", "local_size", "set")},
    "alpha": {"lrn": ("lrn_param", "alpha", "set")},
    "beta": {"lrn": ("lrn_param", "beta", "set")},
    "k": {"lrn": ("lrn_param", "k", "set")},
    "source": {**{t: (p, "source", "set") for t, p in _DATA_SOURCES.items()},
               "infogain_loss": ("infogain_loss_param", "source", "set")},
    "batchsize": {t: (p, "batch_size", "set") for t, p in _DATA_SOURCES.items()},
    "rand_skip": {"data": ("data_param", "rand_skip", "set"), "images": ("image_data_param", "rand_skip", "set")},
    "shuffle_images": {"images": ("image_data_param", "shuffle", "set")},
    "new_height": {"images": ("image_data_param", "new_height", "set")},
    "new_width": {"images": ("image_data_param", "new_width", "set")},
    "concat_dim": {"concat": ("concat_param", "concat_dim", "set")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", "set")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", "set")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", "set")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", "set")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", "set")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, "copy")},
}
#: V0 fields that go into transform_param whatever the layer type.
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}

#: V1 data layers whose deprecated transformation fields move into transform_param.
_V1_TRANSFORM_LAYERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                        V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

#: The V1 ``*_param`` sub-messages; each has a same-named field in LayerParameter.
_V1_PARAMS = [f.name for f in V1.DESCRIPTOR.fields if f.name.endswith("_param")]

#: The deprecated SolverParameter ``solver_type`` enum, by value, as the ``type`` strings.
LEGACY_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def _where(source):
    return str(source) if source else "a NetParameter given in memory"


# -- what needs upgrading ---------------------------------------------------------------------------
def net_needs_v0_upgrade(param):
    return any(layer.HasField("layer") for layer in param.layers)


def net_needs_v1_upgrade(param):
    return len(param.layers) > 0


def net_needs_data_upgrade(param):
    """True when a V1 data layer still has scale/mean_file/crop_size/mirror outside transform_param."""
    for layer in param.layers:
        field = _V1_TRANSFORM_LAYERS.get(layer.type)
        if field and any(getattr(layer, field).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def net_needs_input_upgrade(param):
    return len(param.input) > 0


def _batch_norm_action(layer):
    """"clear", "zero" or None: what the BatchNorm upgrade does to ``layer``."""
    if layer.type != "BatchNorm" or len(layer.param) != 3:
        return None
    if not any(spec.HasField("name") or spec.HasField("share_mode") for spec in layer.param):
        return "clear"          # lr_mult/decay_mult-only specs: the layer now sets them itself
    if all(spec.HasField("lr_mult") and spec.lr_mult == 0 and spec.HasField("decay_mult") and spec.decay_mult == 0
           for spec in layer.param):
        return None             # named (shared) statistics, already frozen
    return "zero"


def net_needs_batch_norm_upgrade(param):
    return any(_batch_norm_action(layer) for layer in param.layer)


def net_needs_upgrade(param):
    """True when ``upgrade_net`` would change ``param`` (Caffe's NetNeedsUpgrade, all steps)."""
    return (net_needs_v0_upgrade(param) or net_needs_v1_upgrade(param) or net_needs_input_upgrade(param)
            or net_needs_batch_norm_upgrade(param))


# -- the whole path -----------------------------------------------------------------------------------
def upgrade_net(param, source=None, *, weights=False):
    """``param`` in the current format, as Caffe's UpgradeNetAsNeeded makes it.

    Returns ``param`` itself when it needs nothing, else an upgraded copy (``param`` is left as it
    is).  ``source`` names the file in the log lines and errors.  ``weights=True`` says ``param``
    holds trained weights (a .caffemodel): net-level ``input`` fields without shapes are then
    dropped, as Caffe drops them, instead of being an error.

    A NetParameter is brought to the current format in Caffe's order, each step logging one INFO
    line that says what it upgraded and in which file:

    1. V0 layers (``layers { layer { type: "conv" kernelsize: 5 } bottom: .. top: .. }``) become V1
       layers; ``padding`` layers are folded into the ``pad`` of the convolution or pooling they feed.
    2. The deprecated data-transformation fields of V1 Data, ImageData and WindowData layers
       (``data_param { scale mean_file crop_size mirror }``) move into ``transform_param``.
    3. V1 layers (``layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 }``) become ``layer``
       entries (``type: "Convolution" param { lr_mult: 1 decay_mult: 1 }``).
    4. The net-level ``input``/``input_shape``/``input_dim`` fields become an Input layer named "input".
    5. BatchNorm layers that declare three ParamSpecs (the old way of freezing their statistics) lose
       them, or keep their names with lr_mult and decay_mult 0 where a name shares them.
    """
    if not net_needs_upgrade(param):
        return param
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    where = _where(source)
    if net_needs_v0_upgrade(out):
        out, folded = _upgrade_v0_net(out, source)
        log.info("Upgraded the V0 layer definitions (layers { layer { ... } }) in %s to V1 layers%s", where,
                 f", folding {folded} padding layer(s) into the pad of the layers they feed" if folded else "")
    if net_needs_data_upgrade(out):
        moved = _upgrade_data_transformation(out)
        log.info("Upgraded the deprecated data transformation fields in %s: %s moved into transform_param",
                 where, ", ".join(moved))
    if net_needs_v1_upgrade(out):
        count = len(out.layers)
        _upgrade_v1_net(out, source)
        log.info("Upgraded %d V1 layer(s) (layers { type: ENUM blobs_lr weight_decay }) in %s to layer "
                 "{ type: \"...\" param { lr_mult decay_mult } }", count, where)
    if net_needs_input_upgrade(out):
        made = _upgrade_net_input(out, source, weights)
        log.info("Upgraded the deprecated net-level input fields in %s %s", where,
                 "to an Input layer named \"input\"" if made else "(dropped: they give no shapes)")
    if net_needs_batch_norm_upgrade(out):
        names = _upgrade_batch_norm(out)
        log.info("Upgraded BatchNorm layer(s) %s in %s: their statistics are no longer set with param "
                 "{ lr_mult } (the layer freezes them itself)", ", ".join(names), where)
    return out


# -- V0 -> V1 ---------------------------------------------------------------------------------------------
def _v0_error(layer, message, where):
    name = layer.layer.name if layer.HasField("layer") else layer.name
    v0_type = layer.layer.type if layer.HasField("layer") else None
    return CaffeishError(message, layer=name or "(unnamed)", layer_type=v0_type, path=where)


def _fold_padding_layers(param, where):
    """Caffe's UpgradeV0PaddingLayers: a list of V1 entries without the ``padding`` layers."""
    kept, last_top, folded = [], {name: -1 for name in param.input}, 0
    for i, conn in enumerate(param.layers):
        layer = conn.layer
        if layer.type != "padding":
            new = V1()
            new.CopyFrom(conn)
            kept.append(new)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise _v0_error(conn, f"unknown bottom blob '{blob}' (bottom index {j}); no earlier layer or "
                                      "net input produces it", where)
            src = last_top[blob]
            if src < 0 or param.layers[src].layer.type != "padding":
                continue
            pad = param.layers[src]
            if layer.type not in ("conv", "pool"):
                raise _v0_error(conn, f"the padding layer '{pad.layer.name}' feeds this layer, but only 'conv' "
                                      "and 'pool' layers can take over its padding", where)
            if len(conn.bottom) != 1 or len(pad.bottom) != 1 or len(pad.top) != 1:
                raise _v0_error(conn, f"cannot fold the padding layer '{pad.layer.name}' into this layer: both "
                                      "need exactly one bottom, and the padding layer one top", where)
            kept[-1].layer.pad = pad.layer.pad
            kept[-1].bottom[j] = pad.bottom[0]
            folded += 1
        for blob in conn.top:
            last_top[blob] = i
    return kept, folded


def _v0_to_v1_layer(conn, where):
    """Caffe's UpgradeV0LayerParameter: one V0 connection as a V1 layer."""
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if v0.type not in V0_TYPES:
            raise _v0_error(conn, f"unknown V0 layer type '{v0.type}' (V0 types: {', '.join(sorted(V0_TYPES))}, "
                                  "and 'padding')", where)
        out.type = V1.LayerType.Value(V0_TYPES[v0.type])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(v0.type)
        if target is None:
            log.warning("%s: V0 layer '%s' (type %s): %s does not apply to this layer type; dropped",
                        _where(where), v0.name, v0.type, field)
            continue
        message, name, how = target
        sub = getattr(out, message)
        value = getattr(v0, field)
        if how == "copy":
            (sub if name is None else getattr(sub, name)).CopyFrom(value)
        elif how == "add":
            getattr(sub, name).append(value)
        else:
            setattr(sub, name, value)
    if v0.HasField("pool"):
        if v0.type == "pool":
            out.pooling_param.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(
                caffe_pb2.V0LayerParameter.PoolMethod.Name(v0.pool))
        else:
            log.warning("%s: V0 layer '%s' (type %s): pool does not apply to this layer type; dropped",
                        _where(where), v0.name, v0.type)
    for field, name in _V0_TRANSFORM.items():
        if v0.HasField(field):
            setattr(out.transform_param, name, getattr(v0, field))
    return out


def _upgrade_v0_net(param, where):
    """Caffe's UpgradeV0Net; the net's other fields are kept."""
    plain = [i for i, conn in enumerate(param.layers) if not conn.HasField("layer")]
    if plain:
        conn = param.layers[plain[0]]
        raise CaffeishError(f"the net mixes V0 layers (layers {{ layer {{ ... }} }}) with V1 ones (layer {plain[0]}"
                            f"{', ' + repr(conn.name) if conn.name else ''} has no inner 'layer'); Caffe would "
                            "lose the V1 ones' settings. Write every layer in one form", path=where)
    kept, folded = _fold_padding_layers(param, where)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    for conn in kept:
        out.layers.add().CopyFrom(_v0_to_v1_layer(conn, where))
    return out, folded


# -- V1 data transformation fields -------------------------------------------------------------------------
def _upgrade_data_transformation(param):
    """Caffe's UpgradeNetDataTransformation (V1 layers): the deprecated fields move into transform_param."""
    moved = []
    for layer in param.layers:
        field = _V1_TRANSFORM_LAYERS.get(layer.type)
        if not field:
            continue
        sub = getattr(layer, field)
        for name in _TRANSFORM_FIELDS:
            if sub.HasField(name):
                setattr(layer.transform_param, name, getattr(sub, name))
                sub.ClearField(name)
                moved.append(f"{layer.name or '(unnamed)'}: {field}.{name}")
    return moved


# -- V1 -> current ----------------------------------------------------------------------------------------------
def _unknown_enum_value(message, field_number):
    """The raw value of an enum field whose number the schema does not know (protobuf keeps it aside)."""
    try:
        from google.protobuf import unknown_fields
        for field in unknown_fields.UnknownFieldSet(message):
            if field.field_number == field_number:
                return field.data
    except (ImportError, AttributeError, TypeError):
        pass
    return None


def v1_type_string(layer, where=None):
    """The current ``type`` string of V1 layer ``layer``; an unknown enum value is a CaffeishError."""
    if layer.HasField("type"):
        return V1_TYPES[layer.type]
    value = _unknown_enum_value(layer, V1.DESCRIPTOR.fields_by_name["type"].number)
    if value is not None:
        raise CaffeishError(f"unknown V1 layer type enum value {value}: no Caffe version defines it (the V1 "
                            f"types are {', '.join(sorted(V1_TYPE_NAMES))}); is the file from a Caffe fork?",
                            layer=layer.name or "(unnamed)", path=where)
    return ""


def _v1_to_layer(v1, where):
    """Caffe's UpgradeV1LayerParameter."""
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    type_ = v1_type_string(v1, where)
    if v1.HasField("type"):
        out.type = type_
    out.blobs.extend(v1.blobs)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for field in _V1_PARAMS:
        if v1.HasField(field):
            getattr(out, field).CopyFrom(getattr(v1, field))
    return out


def _upgrade_v1_net(param, where):
    """Caffe's UpgradeV1Net, in place."""
    if len(param.layer):
        raise CaffeishError(f"the net has both 'layer' entries ({len(param.layer)}) and deprecated V1 'layers' "
                            f"entries ({len(param.layers)}); Caffe would drop the 'layer' ones when upgrading. "
                            "Write every layer in one form (caffeish upgrade-net rewrites V1 files)", path=where)
    layers = [_v1_to_layer(v1, where) for v1 in param.layers]
    del param.layers[:]
    param.layer.extend(layers)


# -- input fields -----------------------------------------------------------------------------------------------
def _upgrade_net_input(param, where, weights):
    """Caffe's UpgradeNetInput, in place: True when an Input layer was made."""
    names = list(param.input)
    if param.input_shape:
        shapes = list(param.input_shape)
        if len(shapes) != len(names):
            raise CaffeishError(f"the net has {len(names)} 'input' fields but {len(shapes)} 'input_shape' fields",
                                path=where)
    elif param.input_dim or not weights:
        dims = list(param.input_dim)
        if len(dims) != 4 * len(names):
            raise CaffeishError(f"the net has {len(names)} 'input' fields, which need {4 * len(names)} "
                                f"'input_dim' values, but {len(dims)} are given", path=where)
        shapes = [caffe_pb2.BlobShape(dim=dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
        shapes = None       # a legacy .caffemodel's inputs: nothing to build, drop them
    del param.input[:], param.input_shape[:], param.input_dim[:]
    if shapes is None:
        return False
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for name, shape in zip(names, shapes):
        layer.top.append(name)
        layer.input_param.shape.add().CopyFrom(shape)
    rest = list(param.layer)
    del param.layer[:]
    param.layer.extend([layer] + rest)
    return True


# -- BatchNorm ---------------------------------------------------------------------------------------------------
def _upgrade_batch_norm(param):
    """Caffe's UpgradeNetBatchNorm, in place; returns the names of the layers changed."""
    changed = []
    for layer in param.layer:
        action = _batch_norm_action(layer)
        if action == "clear":
            del layer.param[:]
        elif action == "zero":
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
        if action:
            changed.append(layer.name or "(unnamed)")
    return changed


# -- solvers ----------------------------------------------------------------------------------------------------
def solver_needs_upgrade(param):
    nets = list(_solver_nets(param))
    return param.HasField("solver_type") or any(net_needs_upgrade(net) for _, net in nets)


def _solver_nets(param):
    for field in ("net_param", "train_net_param"):
        if param.HasField(field):
            yield field, getattr(param, field)
    for i, net in enumerate(param.test_net_param):
        yield f"test_net_param #{i}", net


def upgrade_solver_type(param, source=None):
    """Move the deprecated ``solver_type`` enum into ``type``, in place (Caffe's UpgradeSolverType)."""
    if param.HasField("solver_type"):
        if param.HasField("type"):
            raise CaffeishError("the solver gives both 'solver_type' (deprecated) and 'type'; keep only 'type'",
                                path=source)
        old = caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)
        param.type = LEGACY_SOLVER_TYPES[param.solver_type]
        param.ClearField("solver_type")
        log.info("Upgraded the deprecated solver_type field (%s) to type: \"%s\" in %s", old, param.type,
                 source or "a SolverParameter given in memory")
    return param


def upgrade_solver(param, source=None):
    """``param`` in the current format: ``type`` for ``solver_type``, and its inline nets upgraded.

    Returns ``param`` itself when it needs nothing, else an upgraded copy.
    """
    if not solver_needs_upgrade(param):
        return param
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    upgrade_solver_type(out, source)
    for field, net in list(_solver_nets(out)):
        upgraded = upgrade_net(net, f"{source} ({field})" if source else None)
        if upgraded is not net:
            net.CopyFrom(upgraded)
    return out


# -- clearer parse errors for V1 types ----------------------------------------------------------------------------
_ENUM_ERROR = re.compile(r'Enum type "caffe\.V1LayerParameter\.LayerType" has no value (named|with number) (.+?)\.?$')
_STRING_ERROR = re.compile(r"Expected string but found: '([A-Z0-9_]+)'")
_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[A-Za-z_][\w.]*|[{}<>:]|\S', re.S)


def _enclosing_layer_name(text, offset):
    """The ``name`` of the ``layers``/``layer`` block of prototxt ``text`` that contains ``offset``."""
    stack, prev, block = [], None, None
    tokens = list(_TOKEN.finditer(text))
    for k, m in enumerate(tokens):
        if m.start() >= offset:
            block = next((start for field, start in reversed(stack) if field in ("layers", "layer")), None)
            break
        tok = m.group()
        if tok in ("{", "<"):
            stack.append((prev, k))
        elif tok in ("}", ">") and stack:
            stack.pop()
        if not tok.startswith("#") and tok != ":":
            prev = tok
    if block is None:
        return None
    depth = 0
    for k in range(block, len(tokens) - 2):
        tok = tokens[k].group()
        if tok in ("{", "<"):
            depth += 1
        elif tok in ("}", ">"):
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and tok == "name" and tokens[k + 1].group() == ":":
            value = tokens[k + 2].group()
            if value[:1] in "\"'":
                return value[1:-1]
    return None


def _suggest_v1(value):
    value = value.strip("\"'")
    by_string = {t.lower(): n for n, t in V1_TYPE_NAMES.items() if t}
    if value.upper() in V1_TYPE_NAMES:
        return value.upper()
    if value.lower() in by_string:
        return by_string[value.lower()]
    if value in V0_TYPES:
        return V0_TYPES[value]
    close = difflib.get_close_matches(value.upper(), [n for n in V1_TYPE_NAMES if n != "NONE"], n=1, cutoff=0.8)
    return close[0] if close else None


def explain_type_parse_error(text, line, column, reason, path):
    """A clearer CaffeishError for a parse error about a layer's ``type``, or None for other errors."""
    enum = _ENUM_ERROR.search(reason)
    string = _STRING_ERROR.search(reason) if not enum else None
    if not enum and not (string and string.group(1) in V1_TYPE_NAMES):
        return None
    lines = text.split("\n")
    offset = sum(len(s) + 1 for s in lines[:line - 1]) + max(column - 1, 0)
    if string and not re.search(r"\btype\s*:?\s*$", text[:offset]):
        return None                     # an enum-like word in some other string field
    layer = _enclosing_layer_name(text, offset) or "(unnamed)"
    where = f"{path}:{line}:{column}"
    if string:
        name = string.group(1)
        return CaffeishError(f"type: {name} is the deprecated V1 enum form, which only 'layers {{' entries take; "
                             f"in a 'layer {{' entry write type: \"{V1_TYPE_NAMES[name]}\"", layer=layer, path=where)
    value = enum.group(2)
    hint = _suggest_v1(value)
    if value.startswith('"'):
        fix = f"type: {hint}" if hint else "its enum form"
        return CaffeishError(f"type: {value} is the string form, which only 'layer {{' entries take; in this "
                             f"deprecated 'layers {{' (V1) entry write {fix}, or make it a 'layer {{' entry",
                             layer=layer, path=where)
    known = f"did you mean {hint}?" if hint else f"the V1 types are {', '.join(sorted(V1_TYPE_NAMES))}"
    return CaffeishError(f"unknown V1 layer type {value} in a deprecated 'layers {{' entry; {known}",
                         layer=layer, path=where)
