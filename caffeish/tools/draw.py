"""Net diagrams, as Caffe's ``python/caffe/draw.py`` draws them: a NetParameter as Graphviz DOT text
(``net_to_dot``), rendered by Graphviz (``render``) or written as it is, to a file (``draw_net_to_file``).
"""
import shutil
import subprocess

from ..errors import CaffeishError
from ..proto import caffe_pb2

LAYER_COLOR = "#6495ED"
TYPE_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
               "InnerProduct": "#CC33FF"}
NEURON_COLOR = "#90EE90"
BLOB_COLOR = "#E0E0E0"
RANKDIRS = ("LR", "TB", "BT", "RL")
#: What Graphviz renders (as pycaffe's draw, which hands the file's extension to it), and DOT text itself.
FORMATS = ("png", "svg", "dot", "pdf", "jpg", "jpeg", "gif", "bmp", "ps", "eps", "tif", "tiff")
INSTALL_HINT = ("install Graphviz: pip install 'caffeish[draw]' (the graphviz Python package) plus the Graphviz "
                "program itself (apt install graphviz, brew install graphviz, conda install graphviz), or write "
                "OUT.dot and render it elsewhere")


def quote(text):
    """``text`` as a DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _setting(param, name, default):
    """A convolution or pooling setting as text: ``5``, or ``3x5`` from ``kernel_h``/``kernel_w`` or
    from distinct repeated values."""
    if param.HasField(f"{name}_h") or param.HasField(f"{name}_w"):
        return f"{getattr(param, name + '_h')}x{getattr(param, name + '_w')}"
    value = getattr(param, "kernel_size" if name == "kernel" else name)
    if isinstance(value, int):             # PoolingParameter: one value
        return str(value)
    if len(set(value)) > 1:
        return "x".join(str(v) for v in value)
    return str(value[0] if len(value) else default)


def layer_details(layer):
    """The key settings of ``layer`` as label lines (Caffe's draw shows kernel size, stride and pad)."""
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        lines = [f"kernel size: {_setting(p, 'kernel', 1)}", f"stride: {_setting(p, 'stride', 1)}",
                 f"pad: {_setting(p, 'pad', 0)}"]
        if p.group > 1:
            lines.append(f"group: {p.group}")
        if any(d > 1 for d in p.dilation):
            lines.append(f"dilation: {'x'.join(str(d) for d in p.dilation)}")
        return lines
    if layer.type == "Pooling":
        p = layer.pooling_param
        if p.global_pooling:
            return ["global"]
        return [f"kernel size: {_setting(p, 'kernel', 0)}", f"stride: {_setting(p, 'stride', 1)}",
                f"pad: {_setting(p, 'pad', 0)}"]
    return []


def lr_mults(layer):
    """The learning-rate multipliers of ``layer``'s parameters (1 where a param entry does not say), for the
    layers with weights and bias, as Caffe's draw_net.py --display_lrm shows them; [] for other layers."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct", "Scale", "Bias", "PReLU", "Embed"):
        return []
    count = max(len(layer.param), 2 if layer.type in ("Convolution", "Deconvolution", "InnerProduct") else 1)
    return [layer.param[i].lr_mult if i < len(layer.param) else 1.0 for i in range(count)]


def layer_label(layer, separator, display_lrm=False):
    if layer.type == "Pooling":
        kind = caffe_pb2.PoolingParameter.PoolMethod.Name(layer.pooling_param.pool)
        head = [layer.name, f"({kind} {layer.type})"]
    else:
        head = [layer.name, f"({layer.type})"]
    lines = head + layer_details(layer)
    mults = lr_mults(layer) if display_lrm else []
    if mults:
        lines.append("lr mult: " + ", ".join(f"{m:g}" for m in mults))
    return separator.join(lines)


def edge_label(layer):
    """What the edges out of ``layer`` say (Caffe's get_edge_label), or None."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def phase_includes(layer, phase):
    """Caffe's draw filter: ``phase`` None keeps every layer; else the include/exclude phase rules decide."""
    if layer.include and layer.exclude:
        raise CaffeishError("specify either include rules or exclude rules, not both", layer=layer.name,
                            layer_type=layer.type)
    if phase is None:
        return True
    if layer.include:
        return any(not r.HasField("phase") or r.phase == phase for r in layer.include)
    return not any(r.HasField("phase") and r.phase == phase for r in layer.exclude)


def net_to_dot(net_param, rankdir="LR", phase=None, label_edges=True, display_lrm=False):
    """The DOT text of ``net_param`` (a current-format NetParameter; see caffeish.upgrade).

    Layers are boxes labelled with their name, type and key settings (kernel size, stride and pad of
    convolution and pooling), coloured by type (in-place layers green); blobs are grey octagons, one per
    blob name, so a blob that in-place layers rewrite stays one node, with those layers looping back to
    it.  Edges out of Data, Convolution, Deconvolution and InnerProduct layers carry the batch size or
    the number of outputs.  ``--phase`` keeps only the layers whose include/exclude phase rules match.
    """
    if rankdir not in RANKDIRS:
        raise CaffeishError(f"rankdir must be one of {', '.join(RANKDIRS)}, not '{rankdir}'")
    separator = " " if rankdir in ("TB", "BT") else "\n"
    nodes, edges, blob_ids = [], [], {}

    def blob(name):
        if name not in blob_ids:
            blob_ids[name] = f"blob {name}"
            nodes.append(f"  {quote(blob_ids[name])} [label={quote(name)}, shape=octagon, "
                         f"fillcolor={quote(BLOB_COLOR)}];")
        return blob_ids[name]

    for i, layer in enumerate(net_param.layer):
        if not phase_includes(layer, phase):
            continue
        node = f"layer {i} {layer.name}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        color = NEURON_COLOR if in_place else TYPE_COLORS.get(layer.type, LAYER_COLOR)
        for name in layer.bottom:
            edges.append(f"  {quote(blob(name))} -> {quote(node)};")
        nodes.append(f"  {quote(node)} [label={quote(layer_label(layer, separator, display_lrm))}, shape=box, "
                     f"fillcolor={quote(color)}];")
        label = edge_label(layer) if label_edges else None
        for name in layer.top:
            attrs = f" [label={quote(label)}]" if label else ""
            edges.append(f"  {quote(node)} -> {quote(blob(name))}{attrs};")
    lines = [f"digraph {quote(net_param.name or 'Net')} {{", f"  rankdir={rankdir};",
             "  node [style=filled];"] + nodes + edges + ["}"]
    return "\n".join(lines) + "\n"


def render(dot_text, fmt):
    """``dot_text`` rendered as ``fmt`` (png or svg) bytes, by the graphviz package or the dot program.

    DOT text needs nothing else; PNG and SVG are rendered by Graphviz, through the ``graphviz`` Python
    package when it is installed and otherwise the ``dot`` program.
    """
    try:
        import graphviz
    except ImportError:
        graphviz = None
    if graphviz is not None:
        try:
            return graphviz.Source(dot_text).pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise CaffeishError(f"drawing {fmt.upper()} needs the Graphviz program 'dot', which the graphviz "
                                f"Python package could not find; {INSTALL_HINT}") from None
        except graphviz.CalledProcessError as e:
            raise CaffeishError(f"Graphviz could not render the net: {_stderr(e)}") from None
    exe = shutil.which("dot")
    if exe is None:
        raise CaffeishError(f"drawing {fmt.upper()} needs Graphviz, which is not installed; {INSTALL_HINT}")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True)
    if proc.returncode != 0:
        raise CaffeishError(f"Graphviz's dot could not render the net: {_stderr(proc)}")
    return proc.stdout


def _stderr(result):
    err = getattr(result, "stderr", b"") or b""
    return (err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err)).strip() or "no message"


def output_format(path):
    ext = str(path).rsplit(".", 1)[-1].lower() if "." in str(path) else ""
    if ext == "gv":
        ext = "dot"
    if ext not in FORMATS:
        raise CaffeishError(f"cannot tell the drawing's format from '{path}': its name must end with "
                            f"{', '.join('.' + f for f in FORMATS)} (or .gv)")
    return ext


def draw_net_to_file(net_param, path, rankdir="LR", phase=None, display_lrm=False):
    """Write ``net_param``'s diagram to ``path`` in the format its extension names; returns the format."""
    from ..prototxt import atomic_write_bytes
    fmt = output_format(path)
    dot_text = net_to_dot(net_param, rankdir=rankdir, phase=phase, display_lrm=display_lrm)
    data = dot_text.encode("utf-8") if fmt == "dot" else render(dot_text, fmt)
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CaffeishError(f"cannot write {path}: {e.strerror or e}") from None
    return fmt
