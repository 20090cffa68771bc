"""``caffeish upgrade-net IN OUT`` and ``caffeish upgrade-solver IN OUT``: Caffe's upgrade tools.

``upgrade-net`` is Caffe's upgrade_net_proto_text and upgrade_net_proto_binary in one: a prototxt or
a binary .caffemodel (V0 or V1 layers, net-level inputs, old data-transformation fields, old
BatchNorm param specs) is written in the current format -- binary when OUT ends with .caffemodel or
.binaryproto, text otherwise.  ``upgrade-solver`` moves the deprecated ``solver_type`` enum into
``type`` (and upgrades nets written inside the solver).  Neither overwrites IN unless --in-place.
"""
import os

import click
from google.protobuf import message as pb_message

from ..errors import CaffeishError
from ..proto import caffe_pb2
from ..prototxt import parse_text, read_text_proto, write_binary_proto, write_text_proto
from ..upgrade import net_needs_upgrade, solver_needs_upgrade, upgrade_net, upgrade_solver
from . import register_command

BINARY_SUFFIXES = (".caffemodel", ".binaryproto")


def _output_path(path_in, path_out, in_place):
    if path_out is None:
        if not in_place:
            raise CaffeishError(f"give OUT, the file to write the upgraded {path_in} to, or --in-place to "
                                "overwrite it")
        return path_in
    same = os.path.abspath(path_out) == os.path.abspath(path_in) or (
        os.path.exists(path_out) and os.path.samefile(path_in, path_out))
    if same and not in_place:
        raise CaffeishError(f"OUT is IN ({path_in}); refusing to overwrite it -- give another OUT, or --in-place "
                            "to replace it (comments in a prototxt are lost)")
    return path_out


def _read_net(path):
    """(NetParameter as written, whether the file is binary): a .caffemodel/.binaryproto or non-text is binary."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffeishError(f"cannot read {path}: {e.strerror or e}") from None
    text = None
    if not path.lower().endswith(BINARY_SUFFIXES):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if text is not None:
        # Parsed, not read_net_param'd: this verb decides what to upgrade and writes the result.
        return parse_text(text, caffe_pb2.NetParameter(), path=path), False
    param = caffe_pb2.NetParameter()
    try:
        param.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise CaffeishError(f"{path} is neither a prototxt nor a valid binary NetParameter ({e})") from None
    return param, True


def _write(path, message, binary):
    try:
        (write_binary_proto if binary else write_text_proto)(path, message)
    except OSError as e:
        raise CaffeishError(f"cannot write {path}: {e.strerror or e}") from None


def _report(path_in, path_out, changed, binary, in_place):
    kind = "binary" if binary else "text"
    if changed:
        click.echo(f"{path_in}: upgraded; wrote {path_out} ({kind})")
    elif in_place and os.path.abspath(path_out) == os.path.abspath(path_in):
        click.echo(f"{path_in} is already in the latest format; left unchanged")
    else:
        click.echo(f"{path_in} is already in the latest format; wrote it unchanged to {path_out} ({kind})")


@register_command("upgrade-net")
@click.command()
@click.argument("path_in", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("path_out", metavar="OUT", required=False, type=click.Path(dir_okay=False))
@click.option("--in-place", is_flag=True, help="Replace IN with its upgraded form (OUT may then be left out).")
def upgrade_net_command(path_in, path_out, in_place):
    """Upgrade the net IN (prototxt or .caffemodel) to the current format, into OUT.

    OUT is binary when it ends with .caffemodel or .binaryproto, text otherwise.
    """
    path_out = _output_path(path_in, path_out, in_place)
    param, binary_in = _read_net(path_in)
    changed = net_needs_upgrade(param)
    binary_out = path_out.lower().endswith(BINARY_SUFFIXES)
    if changed:
        param = upgrade_net(param, path_in, weights=binary_in)
    elif in_place and path_out == path_in:
        _report(path_in, path_out, False, binary_in, in_place)
        return
    _write(path_out, param, binary_out)
    _report(path_in, path_out, changed, binary_out, in_place)


@register_command("upgrade-solver")
@click.command()
@click.argument("path_in", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("path_out", metavar="OUT", required=False, type=click.Path(dir_okay=False))
@click.option("--in-place", is_flag=True, help="Replace IN with its upgraded form (OUT may then be left out).")
def upgrade_solver_command(path_in, path_out, in_place):
    """Upgrade the solver IN (the deprecated solver_type enum, nets written inside it) into OUT."""
    path_out = _output_path(path_in, path_out, in_place)
    param = read_text_proto(path_in, caffe_pb2.SolverParameter)
    changed = solver_needs_upgrade(param)
    if changed:
        param = upgrade_solver(param, path_in)
    elif in_place and path_out == path_in:
        _report(path_in, path_out, False, False, in_place)
        return
    _write(path_out, param, False)
    _report(path_in, path_out, changed, False, in_place)
