"""The extension's CUDA kernels on DLPack arrays (cuda_fill_noisy_array, cuda_accumulate_votes_array).

Their arguments are checked before anything is launched.  Here there is no GPU, so the CUDA arrays are
DLPack capsules made by hand (ctypes) that claim to live on a CUDA device at addresses nothing may read:
every check must refuse before a launch; arrays that pass every check reach the launch, which fails
without a device (RuntimeError).  Stand-ins, because no CUDA array can exist here; on a GPU machine the
real tensors are tested in tests/test_torch_cuda.py (-m gpu).
"""
import ctypes

import numpy as np
import pytest

from certseg_rt._ext_loader import EXTENSION_STATUS, ext

pytestmark = pytest.mark.skipif(not EXTENSION_STATUS["cuda"], reason="the extension was built without CUDA")

KDL_CUDA, KDL_CPU = 2, 1
FLOAT, UINT, INT = 2, 1, 0  # DLPack type codes


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_alive = []  # the structures behind the capsules: they must outlive every call


def device_array(shape, code=FLOAT, bits=32, *, device=KDL_CUDA, device_id=0, strides=None):
    """An unversioned DLPack capsule ("dltensor") describing an array on a CUDA device, with no memory behind it."""
    shp = (ctypes.c_int64 * len(shape))(*shape)
    st = None if strides is None else (ctypes.c_int64 * len(strides))(*strides)
    mt = _DLManagedTensor()
    mt.dl_tensor = _DLTensor(0x10000, _DLDevice(device, device_id), len(shape), _DLDataType(code, bits, 1), shp, st, 0)
    _alive.append((shp, st, mt))
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.addressof(mt), b"dltensor", None)


def _no_device():
    return ext.cuda_device_count() == 0


@pytest.mark.parametrize("x,out,error,needle", [
    (lambda: device_array((1, 8, 8)), lambda: device_array((4, 1, 8, 9)), ValueError, r"out must have shape \(B, 64\)"),
    (lambda: device_array((1, 8, 8), INT, 32), lambda: device_array((4, 64)), TypeError, "x must be a float32"),
    (lambda: device_array((1, 8, 8)), lambda: device_array((4, 64), FLOAT, 16), TypeError, "out must be a float32"),
    (lambda: device_array((1, 8, 8)), lambda: device_array((4, 1, 8, 8), strides=(64, 64, 1, 8)), ValueError,
     "C-contiguous"),
    (lambda: device_array((1, 8, 8)), lambda: device_array((4, 64), device_id=1), ValueError, "CUDA device 0 and out"),
    (lambda: np.zeros((1, 8, 8), np.float32), lambda: device_array((4, 64)), TypeError, "incompatible function"),
    (lambda: device_array((1, 8, 8)), lambda: device_array((4, 64), device=KDL_CPU), TypeError, "incompatible"),
])
def test_noise_on_device_arrays_is_checked_before_launch(x, out, error, needle):
    with pytest.raises(error, match=needle):
        ext.cuda_fill_noisy_array(x(), 0.25, 0, 0, out())


@pytest.mark.parametrize("labels,counts,bad,error,needle", [
    (lambda: device_array((4, 8, 8), UINT, 8), lambda: device_array((3, 8, 9), INT, 32), lambda: None, ValueError,
     "must agree after the first axis"),
    (lambda: device_array((4, 8, 8), INT, 32), lambda: device_array((3, 8, 8), INT, 32), lambda: None, TypeError,
     "labels must be a uint8"),
    (lambda: device_array((4, 8, 8), UINT, 8), lambda: device_array((3, 8, 8), INT, 32),
     lambda: device_array((2,), INT, 32), ValueError, "bad_label must hold one int32"),
    (lambda: device_array((4, 8, 8), UINT, 8), lambda: device_array((3, 8, 8), INT, 32),
     lambda: device_array((1,), INT, 32, device_id=2), ValueError, "bad_label is on CUDA device 2"),
    (lambda: device_array((4, 8, 8), UINT, 8), lambda: device_array((300, 8, 8), INT, 32), lambda: None, ValueError,
     r"num_classes must be in \[1, 256\]"),
])
def test_votes_on_device_arrays_are_checked_before_launch(labels, counts, bad, error, needle):
    with pytest.raises(error, match=needle):
        ext.cuda_accumulate_votes_array(labels(), counts(), bad())


@pytest.mark.skipif(not _no_device(), reason="a CUDA device is present: these capsules point at no memory")
def test_checked_device_arrays_reach_the_launch_which_fails_without_a_device():
    with pytest.raises(RuntimeError, match="noisy input kernel launch"):
        ext.cuda_fill_noisy_array(device_array((1, 8, 8)), 0.25, 0, 0, device_array((4, 1, 8, 8)))
    with pytest.raises(RuntimeError, match="vote kernel launch"):
        ext.cuda_accumulate_votes_array(device_array((4, 8, 8), UINT, 8), device_array((3, 8, 8), INT, 32),
                                        device_array((1,), INT, 32))
    with pytest.raises(RuntimeError, match="vote kernel launch"):  # bad_label is optional
        ext.cuda_accumulate_votes_array(device_array((4, 8, 8), UINT, 8), device_array((3, 8, 8), INT, 32))


# ---- the packed kernels of the fused graph (counter (seed, next, end) in device memory) ----------------------------

@pytest.mark.parametrize("x,counter,out,error,needle", [
    (lambda: device_array((2, 1, 8, 8)), lambda: device_array((3,), INT, 64), lambda: device_array((5, 1, 8, 8)),
     ValueError, "out's rows a multiple of x's images"),
    (lambda: device_array((2, 1, 8, 8)), lambda: device_array((2,), INT, 64), lambda: device_array((4, 1, 8, 8)),
     ValueError, r"counter must have shape \(3,\)"),
    (lambda: device_array((2, 1, 8, 8)), lambda: device_array((3,), INT, 32), lambda: device_array((4, 1, 8, 8)),
     TypeError, "counter must be a uint64 or int64"),
    (lambda: device_array((2, 1, 8, 8)), lambda: device_array((3,), INT, 64, device_id=1),
     lambda: device_array((4, 1, 8, 8)), ValueError, "counter is on CUDA device 1"),
    (lambda: device_array((2, 1, 8, 8)), lambda: np.zeros(3, np.int64), lambda: device_array((4, 1, 8, 8)),
     TypeError, "incompatible function"),
])
def test_packed_noise_on_device_arrays_is_checked_before_launch(x, counter, out, error, needle):
    with pytest.raises(error, match=needle):
        ext.cuda_fill_noisy_packed_array(x(), 0.25, counter(), out())


@pytest.mark.parametrize("labels,counts,counter,error,needle", [
    (lambda: device_array((6, 8, 8), UINT, 8), lambda: device_array((4, 3, 8, 8), INT, 32),
     lambda: device_array((3,), INT, 64), ValueError, r"labels \(P \* m, \*S\) and counts \(P, C, \*S\) must agree"),
    (lambda: device_array((6, 8, 8), UINT, 8), lambda: device_array((2, 3, 8, 9), INT, 32),
     lambda: device_array((3,), INT, 64), ValueError, "must agree"),
    (lambda: device_array((6, 8, 8), UINT, 8), lambda: device_array((2, 3, 8, 8), INT, 32),
     lambda: device_array((3,), FLOAT, 64), TypeError, "counter must be a uint64 or int64"),
])
def test_packed_votes_on_device_arrays_are_checked_before_launch(labels, counts, counter, error, needle):
    with pytest.raises(error, match=needle):
        ext.cuda_accumulate_votes_packed_array(labels(), counts(), device_array((1,), INT, 32), counter())


@pytest.mark.skipif(not _no_device(), reason="a CUDA device is present: these capsules point at no memory")
def test_checked_packed_arrays_reach_the_launch_which_fails_without_a_device():
    with pytest.raises(RuntimeError, match="packed noisy input kernel launch"):
        ext.cuda_fill_noisy_packed_array(device_array((2, 1, 8, 8)), 0.25, device_array((3,), UINT, 64),
                                         device_array((6, 1, 8, 8)))
    with pytest.raises(RuntimeError, match="packed vote kernel launch"):
        ext.cuda_accumulate_votes_packed_array(device_array((6, 8, 8), UINT, 8), device_array((2, 3, 8, 8), INT, 32),
                                               device_array((1,), INT, 32), device_array((3,), UINT, 64))
    with pytest.raises(RuntimeError, match="counter kernel launch"):
        ext.cuda_advance_counter_array(device_array((3,), INT, 64), 5)
