"""pycaffe's ``caffe.draw``: net diagrams from a NetParameter, with pycaffe's names and signatures.

``draw_net_to_file(net_param, "net.png", "LR", phase=caffe.TRAIN, display_lrm=True)`` as pycaffe;
the drawing itself is ``caffeish.tools.draw`` (DOT text, rendered by Graphviz for PNG/SVG).
"""
from .tools import draw as _draw


class DotGraph:
    """What ``get_pydot_graph`` returns: the few pydot.Dot methods pycaffe scripts call."""

    def __init__(self, dot_text):
        self.dot_text = dot_text

    def to_string(self):
        return self.dot_text

    def create(self, prog="dot", format="png"):  # noqa: A002 -- pydot's keyword
        return self.dot_text.encode("utf-8") if format in ("dot", "raw") else _draw.render(self.dot_text, format)

    def write(self, path, prog="dot", format="raw"):  # noqa: A002
        from .prototxt import atomic_write_bytes
        atomic_write_bytes(path, self.create(prog, format))


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The diagram of ``caffe_net`` (a NetParameter) as a graph object with ``create(format=...)``."""
    return DotGraph(_draw.net_to_dot(caffe_net, rankdir=rankdir, phase=phase, label_edges=label_edges,
                                     display_lrm=display_lrm))


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The diagram of ``caffe_net`` as the bytes of an ``ext`` (png, svg, pdf, jpg, ..., or dot) file."""
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(format=ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the diagram of ``caffe_net`` to ``filename``; its extension picks the format."""
    _draw.draw_net_to_file(caffe_net, filename, rankdir=rankdir, phase=phase, display_lrm=display_lrm)
