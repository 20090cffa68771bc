"""Reading and writing Caffe's text (prototxt) and binary protobuf files.

Parse errors become one ``CaffeishError`` naming the file, line and column.
Nets and solvers come back upgraded to the current format (``caffeish.upgrade``,
Caffe's upgrade path), each upgrade logged with the file it was made in.
Binary writes go through a temporary file and a rename, so an interrupted
write never leaves a truncated file where a good one was.
"""
import os

from google.protobuf import message as pb_message
from google.protobuf import text_format

from .atomic import atomic_path
from .errors import CaffeishError
from .proto import caffe_pb2
from .upgrade import explain_type_parse_error, upgrade_net, upgrade_solver


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CaffeishError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CaffeishError(f"{path} is not a text file (is it a binary .caffemodel?)") from None


def parse_text(text, message, path="<string>"):
    """Merge prototxt ``text`` into ``message``; errors name ``path:line:column``."""
    try:
        text_format.Merge(text, message, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        reason = str(e)
        # The library prefixes "line:col : "; keep just the reason.
        prefix = f"{line}:{col} : "
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
        if line is not None:
            clearer = explain_type_parse_error(text, line, col, reason, path)
            if clearer is not None:
                raise clearer from None
        where = f"{path}:{line}:{col}" if line is not None else str(path)
        raise CaffeishError(f"{where}: cannot parse {message.DESCRIPTOR.name}: {reason}") from None
    return message


def read_text_proto(path, message_type):
    return parse_text(_read_text(path), message_type(), path=str(path))


def read_binary_proto(path, message_type):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaffeishError(f"cannot read {path}: {e.strerror or e}") from None
    message = message_type()
    try:
        message.ParseFromString(data)
    except pb_message.DecodeError as e:
        raise CaffeishError(f"{path} is not a valid binary {message_type.DESCRIPTOR.name} ({e})") from None
    return message


def read_net_param(source):
    """A NetParameter, upgraded to the current format, from a prototxt path, a NetParameter, or prototxt text.

    A NetParameter that needs no upgrade comes back as it is (the same object).
    """
    if isinstance(source, caffe_pb2.NetParameter):
        return upgrade_net(source)
    source = os.fspath(source)
    if "\n" in source or "{" in source:
        return upgrade_net(parse_text(source, caffe_pb2.NetParameter()), "the prototxt text given")
    return upgrade_net(read_text_proto(source, caffe_pb2.NetParameter), source)


def read_solver_param(source):
    """A SolverParameter, upgraded to the current format, from a prototxt path or a SolverParameter."""
    if isinstance(source, caffe_pb2.SolverParameter):
        return upgrade_solver(source)
    source = os.fspath(source)
    return upgrade_solver(read_text_proto(source, caffe_pb2.SolverParameter), source)


def read_weights(path):
    """A trained NetParameter from a binary .caffemodel."""
    return read_binary_proto(path, caffe_pb2.NetParameter)


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_binary_proto(path, message):
    atomic_write_bytes(path, message.SerializeToString())


def write_text_proto(path, message):
    atomic_write_bytes(path, text_format.MessageToString(message).encode())
