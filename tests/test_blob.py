import numpy
import pytest

from caffeish import Blob, CaffeishError, caffe_pb2


def test_reshape_within_capacity_keeps_buffer_and_sharing():
    a = Blob((2, 3, 4))
    b = Blob((2, 3, 4))
    b.share_data(a)
    a.data[...] = 1.5
    assert (b.data == 1.5).all()
    a.reshape(4, 6)
    b.reshape(24)
    a.data[0, 0] = 7
    assert b.data[0] == 7 and a.shares_data_with(b)
    a.reshape(100)  # grows: a new buffer, as in Caffe
    assert not a.shares_data_with(b)


def test_share_diff_and_count_checks():
    a, b = Blob((5,)), Blob((5,))
    b.share_diff(a)
    a.diff[...] = 2
    assert (b.diff == 2).all()
    with pytest.raises(CaffeishError, match="cannot share"):
        Blob((4,)).share_data(a)


def test_nd_shape_and_legacy_accessors():
    b = Blob((2, 3, 4, 5, 6))
    assert b.count == 720 and b.num_axes == 5 and b.shape_at(-1) == 6 and b.count_range(1, 3) == 12
    with pytest.raises(CaffeishError):
        _ = b.num
    c = Blob((7, 8))
    assert (c.num, c.channels, c.height, c.width) == (7, 8, 1, 1)


def test_data_setter_checks_shape():
    b = Blob((2, 2))
    b.data = numpy.arange(4.0).reshape(2, 2)
    assert b.data[1, 1] == 3
    with pytest.raises(CaffeishError, match="cannot set data"):
        b.data = numpy.zeros(3)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_proto_round_trip(dtype):
    b = Blob((2, 3), dtype=dtype)
    b.data[...] = numpy.arange(6).reshape(2, 3) / 7
    b.diff[...] = -1
    proto = b.to_proto(write_diff=True)
    assert list(proto.shape.dim) == [2, 3]
    assert len(proto.double_data if dtype == numpy.float64 else proto.data) == 6
    again = caffe_pb2.BlobProto.FromString(proto.SerializeToString())
    c = Blob.from_proto_new(again, dtype=dtype)
    numpy.testing.assert_array_equal(c.data, b.data)
    numpy.testing.assert_array_equal(c.diff, b.diff)


def test_legacy_4d_proto_loads_into_2d_blob():
    proto = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=list(range(6)))
    b = Blob((2, 3))
    b.from_proto(proto, reshape=False)
    assert b.data[1, 2] == 5
    with pytest.raises(CaffeishError, match="shape mismatch"):
        Blob((3, 2)).from_proto(proto, reshape=False)
    bad = caffe_pb2.BlobProto(data=[1, 2, 3])
    bad.shape.dim.extend([2, 2])
    with pytest.raises(CaffeishError, match="3 values"):
        Blob().from_proto(bad)
