"""A built net as a table: each layer's top shapes, parameter count and multiply-adds, with totals
(``summarize``, ``format_summary``; what ``caffeish summary`` prints).
"""
import os
from dataclasses import dataclass, field

from ..errors import CaffeishError
from ..net_graph import filter_net
from ..proto import caffe_pb2

#: Layers that open their ``source`` when the net is built, and the parameter naming it.
DATA_SOURCES = {"Data": "data_param", "ImageData": "image_data_param", "HDF5Data": "hdf5_data_param",
                "WindowData": "window_data_param"}


@dataclass
class Row:
    name: str
    type: str
    top_shapes: list
    params: int = 0
    shared: bool = False
    macs: int = 0


@dataclass
class Summary:
    name: str
    phase: str = ""
    rows: list = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0


def missing_data_sources(net_param, state):
    """(layer name, type, source) for each data layer of ``net_param`` in ``state`` whose source is missing."""
    missing = []
    for lp in filter_net(net_param, state).layer:
        field_name = DATA_SOURCES.get(lp.type)
        if field_name is None:
            continue
        source = getattr(lp, field_name).source
        if source and not os.path.exists(source):
            missing.append((lp.name, lp.type, source))
    return missing


def check_data_sources(net_param, state, path):
    """A CaffeishError explaining what to do when building ``net_param`` would fail on missing data."""
    missing = missing_data_sources(net_param, state)
    if not missing:
        return
    name, kind, source = missing[0]
    others = f" (and {len(missing) - 1} more data layer(s))" if len(missing) > 1 else ""
    phase = caffe_pb2.Phase.Name(state.phase)
    raise CaffeishError(f"cannot summarise {path} in phase {phase}: building the net opens its data, and layer "
                        f"'{name}' ({kind}) reads {source}, which does not exist{others}. Paths are relative to "
                        f"the directory caffeish runs in ({os.getcwd()}). Create the data first (caffeish convert), "
                        "run from the directory the paths start from, pick the other --phase if its data exists, or "
                        "summarise the net's deploy version (an Input layer instead of data layers): its shapes and "
                        "counts are the same for the same batch size")


def summarize(net):
    """The Summary of a built caffeish Net.

    Multiply-adds (MACs) are counted for the layers whose cost is a product of matrices, from the blob
    shapes of the built net (so for its batch size), bias additions left out:

    - Convolution: ``N * C_out * H_out * W_out * (C_in / group) * k_h * k_w`` (any number of spatial
      axes: the product over them), i.e. each top's count times the weight blob's count per output channel;
    - Deconvolution: the same with bottom and top swapped, ``N * C_in * H_in * W_in * (C_out / group) * k_h * k_w``;
    - InnerProduct: ``N * M * K`` (M outputs, K inputs per example).

    Every other layer counts 0 (elementwise work such as ReLU, pooling or softmax is not counted).
    Parameters are the layer's blobs (BatchNorm's statistics included); a blob shared with an earlier
    layer (a ``param { name }`` seen before) is marked and counted once in the total.  The Split layers
    the net inserts for fan-out are not listed.
    """
    summary = Summary(name=net.name, phase=caffe_pb2.Phase.Name(net.phase))
    index = 0
    owners = [record.owner for record in net.param_records]
    for lid, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        params, shared = 0, False
        for blob in layer.blobs:
            owned = owners[index] < 0
            index += 1
            params += blob.count
            shared = shared or not owned
            if owned:
                summary.total_params += blob.count
        if layer.type == "Split" and name.endswith("_split") and not layer.blobs:
            continue
        macs = layer.macs(net.bottom_vecs[lid], net.top_vecs[lid])
        summary.total_macs += macs
        tops = [tuple(t.shape) for t in net.top_vecs[lid]]
        summary.rows.append(Row(name, layer.type, tops, params, shared, macs))
    return summary


def _shape(shape):
    return "x".join(str(d) for d in shape) if shape else "scalar"


def format_summary(summary):
    """The table as text: one line per layer, then the totals and what the MACs count."""
    header = ("Layer", "Type", "Top shape(s)", "Params", "MACs")
    lines = []
    for r in summary.rows:
        params = f"{r.params:,}" + (" (shared)" if r.shared else "") if r.params else "-"
        lines.append((r.name, r.type, ", ".join(_shape(s) for s in r.top_shapes) or "-", params,
                      f"{r.macs:,}" if r.macs else "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    right = (False, False, False, True, True)

    def fmt(row):
        cells = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(tuple("-" * w for w in widths)))
    title = f"Net: {summary.name or '(unnamed)'}" + (f" (phase {summary.phase})" if summary.phase else "")
    out = [title, fmt(header), rule] + [fmt(row) for row in lines] + [rule]
    out.append(f"Total params: {summary.total_params:,}")
    out.append(f"Total multiply-adds: {summary.total_macs:,}")
    out.append("(MACs: Convolution, Deconvolution and InnerProduct layers, at the batch size shown, bias adds "
               "left out; other layers count 0.)")
    return "\n".join(out) + "\n"
