"""pycaffe's net_spec: write a net in Python, get a ``NetParameter``.  ``NetSpec`` names the tops, ``layers``
(``L``) makes a layer of any type from keyword arguments routed by the ``caffe_pb2`` schema, ``params`` (``P``)
gives the enums; ``write_generated`` is the command line of a script that writes prototxt files.
"""
import difflib
from collections import Counter, OrderedDict

import numpy
from google.protobuf import message as pb_message
from google.protobuf.descriptor import FieldDescriptor

from .errors import CaffeishError, CaffeishTypeError
from .proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "param_name_dict", "to_proto"]

_LAYER = caffe_pb2.LayerParameter.DESCRIPTOR
#: LayerParameter fields a keyword may set directly (not through a ``*_param`` message), ``param`` included.
_LAYER_FIELDS = [f.name for f in _LAYER.fields
                 if not f.name.endswith("_param") and f.name not in ("type", "bottom", "top")]
#: Set by NetSpec itself: positional arguments, ``ntop``/``in_place`` and the layer's type.
_RESERVED = {"bottom": "pass bottoms as positional arguments", "top": "tops are named by NetSpec assignment "
             "(use ntop= for several)", "type": "the type is the attribute of `layers` called (L.Convolution)"}
#: Types whose layers read messages named after other types (Caffe's layer sources).
_SHARED_MESSAGES = {"Deconvolution": ["convolution_param"], "RNN": ["recurrent_param"],
                    "LSTM": ["recurrent_param"], "SoftmaxWithLoss": ["softmax_param"]}


def param_name_dict():
    """Layer type -> param field prefix, from the schema: ``FooParameter`` in ``foo_param`` -> ``{"Foo": "foo"}``."""
    out = {}
    for field in _LAYER.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None and message.name.endswith("Parameter"):
            out[message.name[:-len("Parameter")]] = field.name[:-len("_param")]
    return out


_PARAM_NAMES = param_name_dict()


def param_fields_for(type_name):
    """The ``*_param`` fields whose fields a layer of ``type_name`` takes as keyword arguments, in lookup order."""
    fields = []
    if type_name in _PARAM_NAMES:
        fields.append(_PARAM_NAMES[type_name] + "_param")
    fields += _SHARED_MESSAGES.get(type_name, [])
    if type_name.endswith("Loss"):
        fields.append("loss_param")
    return list(dict.fromkeys(fields))


# -- assigning Python values to messages ----------------------------------------------------------------
def _field_names(descriptor):
    return ", ".join(f.name for f in descriptor.fields)


def _scalar(field, value, where):
    if isinstance(value, numpy.generic):
        value = value.item()
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        known = field.enum_type.values_by_name
        if value not in known:
            raise CaffeishError(f"{where} takes one of {', '.join(known)} ({field.enum_type.name}), not '{value}'")
        return known[value].number
    return value


def _fill(message, value, where):
    """Fill ``message`` from a dict (field -> value) or a message of the same type."""
    if isinstance(value, pb_message.Message):
        if value.DESCRIPTOR.full_name != message.DESCRIPTOR.full_name:
            raise CaffeishError(f"{where} takes a {message.DESCRIPTOR.name} (or a dict), "
                                f"not a {value.DESCRIPTOR.name}")
        message.MergeFrom(value)
        return
    if not isinstance(value, dict):
        raise CaffeishError(f"{where} is a {message.DESCRIPTOR.name} message: give it a dict of its fields "
                            f"({_field_names(message.DESCRIPTOR)}), not {value!r}")
    for key, item in value.items():
        assign(message, key, item, where)


def assign(message, name, value, where=None):
    """Set field ``name`` of ``message`` from a Python value: dicts fill messages, lists repeated fields."""
    where = where or message.DESCRIPTOR.name
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise CaffeishError(f"{where}: {message.DESCRIPTOR.name} has no field '{name}' "
                            f"(its fields: {_field_names(message.DESCRIPTOR)})")
    path = f"{where}.{name}"
    is_message = field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)
    try:
        if field.is_repeated:
            if isinstance(value, numpy.ndarray):
                value = value.tolist()
            values = list(value) if isinstance(value, (list, tuple, range)) else [value]
            container = getattr(message, name)
            for i, item in enumerate(values):
                if is_message:
                    _fill(container.add(), item, f"{path}[{i}]")
                else:
                    container.append(_scalar(field, item, f"{path}[{i}]"))
        elif is_message:
            _fill(getattr(message, name), value, path)
        else:
            setattr(message, name, _scalar(field, value, path))
    except (TypeError, ValueError) as e:
        raise CaffeishError(f"{path}: cannot take {value!r} ({e})") from None


# -- the graph --------------------------------------------------------------------------------------------
class Top:
    """One output blob of a layer (``n``-th top of ``fn``); ``name`` optionally fixes its blob name."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n
        self.name = None

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params):
        self.fn._update(params)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """A layer: its type, its inputs (tops of earlier layers) and its keyword arguments."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        params = dict(params)
        self.ntop = params.pop("ntop", 1)
        self.in_place = bool(params.pop("in_place", False))
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise CaffeishError(f"L.{type_name}: ntop must be a whole number >= 0, not {self.ntop!r}")
        self.inputs = [_check_input(type_name, i, inp) for i, inp in enumerate(inputs)]
        if self.in_place and self.ntop > len(self.inputs):
            raise CaffeishError(f"L.{type_name}: in_place=True writes the tops into the bottoms, but it has "
                                f"{self.ntop} tops and {len(self.inputs)} bottoms")
        self.params = params
        self.proto = self._layer_params()
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _update(self, params):
        self.params.update(params)
        self.proto = self._layer_params()

    def _layer_params(self):
        """A LayerParameter holding the keyword arguments (no name, bottoms or tops yet)."""
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        own = param_fields_for(self.type_name)
        for key, value in self.params.items():
            where = f"L.{self.type_name}"
            if key in _RESERVED:
                raise CaffeishError(f"{where}: keyword '{key}' is not taken: {_RESERVED[key]}")
            target = next((f for f in own if key in _LAYER.fields_by_name[f].message_type.fields_by_name), None)
            if target is not None and not key.endswith("param"):
                assign(getattr(layer, target), key, value, f"{where}: {target}")
            elif key in _LAYER.fields_by_name:
                assign(layer, key, value, where)
            else:
                raise CaffeishError(self._unknown(key))
        return layer

    def _unknown(self, key):
        own = param_fields_for(self.type_name)
        messages = [_LAYER.fields_by_name[f].message_type for f in own]
        if own:
            takes = "; ".join(f"{f} ({m.name}): {_field_names(m)}" for f, m in zip(own, messages))
            what = f"a field of {' or '.join(own)} nor"
        else:
            takes = "no parameter message of its own (caffe.proto has no <Type>Parameter for it)"
            what = "a field of"
        known = [f.name for m in messages for f in m.fields] + _LAYER_FIELDS
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return (f"L.{self.type_name}: unknown keyword argument '{key}': it is not {what} LayerParameter.{hint} "
                f"{self.type_name} takes {takes}; every layer also takes {', '.join(_LAYER_FIELDS)}, "
                "any <x>_param=dict(...), ntop and in_place")

    def __repr__(self):
        return f"<{self.type_name} layer, {self.ntop} top(s)>"


def _is_group(value):
    return isinstance(value, (list, tuple))


def _check_input(type_name, i, inp):
    if isinstance(inp, Top):
        return inp
    if _is_group(inp) and inp and all(isinstance(t, Top) for t in inp):
        if len(set(id(t.fn) for t in inp)) == len(inp):
            return list(inp)
        hint = ("a list of tops means alternatives from different layers (e.g. one data layer per phase), but "
                "these come from one layer; unpack several tops instead: L.Silence(*tops, ntop=0)")
    elif isinstance(inp, Function):
        hint = f"it is a {inp.type_name} layer with ntop={inp.ntop}, which has no top to read"
    else:
        hint = "a bottom is a top, what a layer call returns"
    # pycaffe's own words (scripts match on them); the advice goes into a note, shown with the traceback.
    error = CaffeishTypeError(f"{type_name} input {i} is not a Top (type is {type(inp)})")
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(f"L.{type_name}: bottom {i}: {hint}")
    raise error


def _check_group(tops, where):
    fns = [t.fn for t in tops]
    if len(set(map(id, fns))) != len(fns):
        raise CaffeishError(f"{where}: a list of tops means alternatives from different layers (e.g. one data "
                            "layer per phase), but these come from one layer; unpack several tops instead: "
                            "n.a, n.b = L.Slice(..., ntop=2)")


class _Namer:
    """Blob and layer names: assigned names first, then pycaffe's ``<Type><N>``."""

    def __init__(self, names):
        self.names = dict(names)      # Top or Function -> name
        self.alias = {}               # Top or Function -> the Top or Function whose name it shares
        self.counts = Counter()

    def auto(self, type_name):
        self.counts[type_name] += 1
        return f"{type_name}{self.counts[type_name]}"

    def share(self, tops):
        """Alternatives: every layer of ``tops[1:]`` takes the names of the first top's layer."""
        first = tops[0].fn
        for top in tops[1:]:
            self.alias.setdefault(top.fn, first)
            for mine, theirs in zip(top.fn.tops, first.tops):
                self.alias.setdefault(mine, theirs)

    def top(self, top):
        if top not in self.names:
            if top.name is not None:
                self.names[top] = top.name
            elif top in self.alias:
                self.names[top] = self.top(self.alias[top])
            else:
                self.names[top] = self.auto(top.fn.type_name)
        return self.names[top]

    def layer(self, fn):
        if fn.proto.HasField("name"):
            return fn.proto.name
        if fn not in self.names:
            if fn in self.alias:
                self.names[fn] = self.layer(self.alias[fn])
            elif fn.ntop:
                self.names[fn] = self.top(fn.tops[0])
            else:
                self.names[fn] = self.auto(fn.type_name)
        return self.names[fn]


def _roots(value):
    """The layers a NetSpec value or a to_proto argument stands for."""
    if isinstance(value, Function):
        return [value]
    if isinstance(value, Top):
        return [value.fn]
    return [t.fn for t in value]


def _input_fns(fn):
    out = []
    for inp in fn.inputs:
        out += [t.fn for t in inp] if isinstance(inp, list) else [inp.fn]
    return out


def _build(values, namer):
    """Every layer the values need, in dependency order (inputs first), as a NetParameter."""
    roots = [fn for value in values for fn in _roots(value)]
    seen, order = set(), []
    for root in roots:  # pre-pass: register alternatives used as bottoms before anything is named
        stack = [root]
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            for inp in fn.inputs:
                if isinstance(inp, list):
                    namer.share(inp)
            stack.extend(_input_fns(fn))
    done = set()
    for root in roots:  # depth-first, inputs in order, each layer after all of its inputs
        stack = [(root, False)]
        while stack:
            fn, ready = stack.pop()
            if fn in done:
                continue
            if ready:
                done.add(fn)
                order.append(fn)
            else:
                stack.append((fn, True))
                stack.extend((dep, False) for dep in reversed(_input_fns(fn)) if dep not in done)
    net = caffe_pb2.NetParameter()
    emitted = {}
    for fn in order:
        layer = net.layer.add()
        layer.CopyFrom(fn.proto)
        # A bottom is the blob its layer writes: for an in-place layer, that layer's own bottom.
        bottoms = [emitted[t.fn].top[t.n] for t in (inp[0] if isinstance(inp, list) else inp for inp in fn.inputs)]
        layer.bottom.extend(bottoms)
        layer.top.extend(bottoms[:fn.ntop] if fn.in_place else [namer.top(t) for t in fn.tops])
        layer.name = namer.layer(fn)
        emitted[fn] = layer
    return net


def to_proto(*tops):
    """A NetParameter with every layer needed for ``tops``; unnamed blobs and layers get ``<Type><N>`` names."""
    for i, top in enumerate(tops):
        _check_value(top, f"to_proto argument {i}")
    namer = _Namer({})
    for top in tops:
        if _is_group(top):
            namer.share(top)
    return _build(tops, namer)


def _check_value(value, where):
    if isinstance(value, (Top, Function)):
        return
    if _is_group(value) and value and all(isinstance(t, Top) for t in value):
        _check_group(value, where)
        return
    raise CaffeishError(f"{where} must be a top (what L.<Type>(...) returns), a list of alternative tops, or a "
                        f"layer with ntop=0, not {value!r}")


class NetSpec:
    """Named tops: assign ``n.conv1 = L.Convolution(...)``; ``to_proto()`` writes every layer they need.

    ::

        from caffeish import caffe_pb2
        from caffeish.net_spec import NetSpec, layers as L, params as P

        n = NetSpec()
        n.data, n.label = L.Data(source="train_lmdb", batch_size=64, backend=P.Data.LMDB, ntop=2,
                                 transform_param=dict(scale=1 / 256.), include=dict(phase=caffe_pb2.TRAIN))
        n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
        n.relu1 = L.ReLU(n.conv1, in_place=True)
        n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
        net_param = n.to_proto()

    Names follow pycaffe: a top is named by the ``NetSpec`` attribute it is assigned to, a layer by its first
    top (an in-place layer, ``n.relu1 = L.ReLU(n.ip1, in_place=True)``, is layer ``relu1`` writing blob
    ``ip1``), and whatever is left unnamed becomes ``<Type><N>`` (``Convolution1``, ``Convolution2``...).
    ``name="..."`` sets a layer's name explicitly. ``to_proto`` lists layers in dependency order.

    Alternatives: assigning a list of tops from different layers, ``n.data = [train_data, test_data]``, gives
    them all that one name, and the other tops of those layers follow their position in the first layer. This
    writes the usual pair of phase-specific data layers (``include=dict(phase=...)``) feeding one net; using
    the list as a bottom reads the shared blob.
    """

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        _check_value(value, f"NetSpec.{name}")
        self.tops[name] = list(value) if _is_group(value) else value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}' (it has: {', '.join(self.tops)})") from None

    __setitem__ = __setattr__

    def __getitem__(self, name):
        return self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def update(self, name, params):
        """Change keyword arguments of the layer behind top ``name``."""
        value = self.tops[name]
        for fn in _roots(value):
            fn._update(params)

    def to_proto(self):
        names = {}
        for name, value in self.tops.items():
            if isinstance(value, Function):
                names[value] = name
            elif isinstance(value, Top):
                names[value] = value.name if value.name is not None else name
            else:
                for top in value:
                    names[top] = name
        namer = _Namer(names)
        for value in self.tops.values():
            if isinstance(value, list):
                namer.share(value)
        return _build(self.tops.values(), namer)


class _NameError(CaffeishError, AttributeError):
    """A wrong name after ``L.`` or ``P.``: a clear CaffeishError that ``hasattr`` still understands."""


class Layers:
    """``layers.Convolution(bottom, **kwargs)``: any attribute is a layer type.

    Keyword arguments are routed by the schema (``caffe_pb2`` descriptors), not by a hand-kept table:

    - ``ntop`` (default 1) is the number of tops: 1 returns a ``Top``, more a tuple, 0 the layer itself;
      ``in_place=True`` makes the tops the bottoms (``ReLU``, ``Dropout``...).
    - ``param``, ``transform_param`` and every other ``*_param``, and the other LayerParameter fields
      (``name``, ``phase``, ``loss_weight``, ``propagate_down``, ``include``, ``exclude``, ``blobs``) set the layer.
    - Any other keyword is a field of the layer type's own message, found as pycaffe finds it: a
      ``FooParameter`` message held in ``foo_param`` belongs to type ``Foo`` (``Convolution`` ->
      ``convolution_param``, ``InnerProduct`` -> ``inner_product_param``). A few types also read messages
      named after other types, as Caffe's layers do: ``Deconvolution`` reads ``convolution_param``, ``RNN`` and
      ``LSTM`` read ``recurrent_param``, every ``*Loss`` type reads ``loss_param``, and ``SoftmaxWithLoss``
      reads ``softmax_param``. An unknown keyword is a ``CaffeishError`` that lists the fields there are.
    - Values: a dict fills a message, a list fills a repeated field (a single value is taken as a list of
      one), enums take their number (``P.Pooling.MAX``, ``caffe_pb2.TRAIN``) or their name (``"MAX"``).
    """

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **kwargs):
            fn = Function(type_name, bottoms, kwargs)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _Enums:
    def __init__(self, type_name, message):
        self._type_name, self._message = type_name, message

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return getattr(self._message, name)
        except AttributeError:
            values = [v.name for e in self._message.DESCRIPTOR.enum_types for v in e.values]
            raise _NameError(f"P.{self._type_name}.{name}: {self._message.DESCRIPTOR.name} has no value '{name}' "
                             f"(it has: {', '.join(values) or 'no enums'})") from None


class Parameters:
    """``params.Pooling.MAX``: enum values of the ``<Type>Parameter`` messages."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, type_name + "Parameter", None)
        if message is None:
            raise _NameError(f"P.{type_name}: caffe.proto has no message {type_name}Parameter")
        return _Enums(type_name, message)


layers = Layers()
params = Parameters()


def write_generated(files, description, default_dir, argv=None):
    """The ``main`` of a model-writing script: ``files`` is [(file name, header text, function -> NetParameter)];
    ``--out-dir DIR`` (default ``default_dir``) says where they go.  Each is written atomically."""
    import argparse
    import os

    from google.protobuf import text_format

    from .prototxt import atomic_write_bytes
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", default=default_dir, help="where to write the prototxt files (default: here)")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, header, make in files:
        path = os.path.join(args.out_dir, name)
        atomic_write_bytes(path, (header + text_format.MessageToString(make())).encode())
        print(f"wrote {path}")
