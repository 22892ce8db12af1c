"""The sampling loop's hot kernels: counter-based Gaussian noise, noisy inputs, vote counting.

Noise contract (the same in the compiled extension, on CPU and GPU, and here in numpy):

* Philox4x32-10 (Salmon et al., SC'11 / Random123), key = (seed & 0xFFFFFFFF, seed >> 32).
* The normal for element e (flat index into one sample's C*H*W input) of sample s comes from
  the block counter (e // 4, s & 0xFFFFFFFF, s >> 32, 0): its four words r0..r3 become
  uniforms u_i = (r_i + 0.5) * 2**-32 in (0, 1), and Box-Muller in double precision gives
  z0 = sqrt(-2 ln u0) cos(2 pi u1), z1 = sqrt(-2 ln u0) sin(2 pi u1), z2, z3 likewise from (u2, u3);
  element e takes z[e % 4], rounded to float32.
* x_noisy = x + float32(sigma) * eps, in float32 (no fused multiply-add), for each sample s.

So any sample of any batch can be regenerated alone, on any device, by any backend.  This module
is the numpy implementation; ``certseg_rt._ext`` (cpp_ext/) is the compiled one and is used when
it is built.
"""
from __future__ import annotations

import numpy as np

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
_LO = np.uint64(0xFFFFFFFF)
_TWO_POW_MINUS_32 = 2.0**-32


def philox4x32(counter, key, rounds: int = 10) -> np.ndarray:
    """Philox4x32-R on arrays: counter (..., 4) uint32, key (..., 2) uint32 -> (..., 4) uint32."""
    ctr = np.asarray(counter, dtype=np.uint32)
    k = np.asarray(key, dtype=np.uint32)
    if ctr.shape[-1:] != (4,) or k.shape[-1:] != (2,):
        raise ValueError(f"counter must end in 4 words and key in 2, got shapes {ctr.shape} and {k.shape}")
    c0, c1, c2, c3 = (ctr[..., i].astype(np.uint64) for i in range(4))
    k0, k1 = k[..., 0].astype(np.uint64), k[..., 1].astype(np.uint64)
    for r in range(rounds):
        if r:  # the key schedule adds the Weyl constants modulo 2**32
            k0 = (k0 + PHILOX_W0) & _LO
            k1 = (k1 + PHILOX_W1) & _LO
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ k0,
            p1 & _LO,
            (p0 >> np.uint64(32)) ^ c3 ^ k1,
            p0 & _LO,
        )
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _seed_key(seed: int) -> np.ndarray:
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)


def _check_samples(first_sample: int, num_samples: int) -> None:
    if not (0 <= first_sample and 0 <= num_samples and first_sample + num_samples <= 2**64):
        raise ValueError(f"samples {first_sample} .. {first_sample} + {num_samples} must lie in [0, 2**64) "
                         f"(sample indices are 64-bit counters)")


def gaussian_noise(seed: int, first_sample: int, num_samples: int, elements: int) -> np.ndarray:
    """eps for samples first_sample .. first_sample + num_samples - 1: float32 (num_samples, elements)."""
    _check_samples(first_sample, num_samples)
    if elements < 0:
        raise ValueError(f"elements must be >= 0, got {elements}")
    blocks = (elements + 3) // 4
    samples = np.arange(first_sample, first_sample + num_samples, dtype=np.uint64)
    ctr = np.empty((num_samples, blocks, 4), dtype=np.uint32)
    ctr[..., 0] = np.arange(blocks, dtype=np.uint32)[None, :]
    ctr[..., 1] = (samples & _LO).astype(np.uint32)[:, None]
    ctr[..., 2] = (samples >> np.uint64(32)).astype(np.uint32)[:, None]
    ctr[..., 3] = 0
    r = philox4x32(ctr, _seed_key(seed))
    u = (r.astype(np.float64) + 0.5) * _TWO_POW_MINUS_32
    radius = np.sqrt(-2.0 * np.log(u[..., 0::2]))  # (S, blocks, 2): from u0 and u2
    angle = 2.0 * np.pi * u[..., 1::2]  # from u1 and u3
    z = np.empty_like(u)
    z[..., 0::2] = radius * np.cos(angle)
    z[..., 1::2] = radius * np.sin(angle)
    return z.reshape(num_samples, blocks * 4)[:, :elements].astype(np.float32)


def fill_noisy(x: np.ndarray, sigma: float, seed: int, first_sample: int, out: np.ndarray) -> np.ndarray:
    """out[b] = x + sigma * eps(seed, first_sample + b) for every b of out (B, *x.shape), float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out.dtype != np.float32 or out.shape[1:] != x.shape:
        raise ValueError(f"out must be float32 of shape (B, {', '.join(map(str, x.shape))}), "
                         f"got {out.dtype} {out.shape}")
    eps = gaussian_noise(seed, first_sample, out.shape[0], x.size).reshape(out.shape)
    np.multiply(eps, np.float32(sigma), out=out)
    out += x
    return out


def accumulate_votes(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """counts[c, p] += #{b : labels[b, p] == c}; labels uint8 (B, *S), counts int32 (C, *S), in place.

    The compiled kernel's contract, check for check (same errors in the same order), so that an input one
    implementation refuses the other refuses too: no conversion of other dtypes (a float label would be
    truncated), C-contiguous arrays, a writable counts array, and a label >= C leaves counts unchanged.
    """
    for name, array in (("labels", labels), ("counts", counts)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if not counts.flags.writeable:
        raise TypeError("counts must be a writable array (votes are accumulated in place)")
    for name, array, dtype in (("labels", labels, np.uint8), ("counts", counts, np.int32)):
        if array.dtype != dtype:
            kind = np.dtype(dtype).name
            raise TypeError(f"{name} must be a {kind} array, got {array.dtype} (convert it with .astype(np.{kind}))")
        if array.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {array.shape}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray), got shape {array.shape} "
                             f"with non-contiguous strides")
    if labels.ndim != counts.ndim or labels.shape[1:] != counts.shape[1:]:
        raise ValueError(f"labels (B, *S) and counts (C, *S) must agree after the first axis, got labels "
                         f"{labels.shape} and counts {counts.shape}")
    num_classes = counts.shape[0]
    if not 1 <= num_classes <= 256:
        raise ValueError(f"num_classes must be in [1, 256], got {num_classes}")
    pixels = int(np.prod(counts.shape[1:]))
    flat = labels.reshape(labels.shape[0], pixels)
    top = int(flat.max(initial=0))
    if top >= num_classes:
        raise ValueError(f"label {top} out of range for {num_classes} classes: the model's output does not "
                         f"match the class count it declares")
    index = flat.astype(np.intp) * pixels + np.arange(pixels)
    counts.reshape(num_classes, pixels)[...] += np.bincount(
        index.ravel(), minlength=num_classes * pixels).reshape(num_classes, pixels).astype(counts.dtype)
    return counts


def _words(name: str, value, count: int) -> np.ndarray:
    """`value` as `count` uint32 words, refusing what a cast to uint32 would silently change: floats (0.5
    truncates to 0), booleans, negative or too large integers (which wrap)."""
    words = np.asarray(value)
    if words.shape != (count,):
        raise ValueError(f"counter must be 4 uint32 words and key 2, got {name} of shape {words.shape}")
    elements = list(value) if isinstance(value, (list, tuple)) else words.tolist()  # a list's True stays a bool
    integral = words.dtype.kind in "iuO" and all(
        isinstance(w, (int, np.integer)) and not isinstance(w, (bool, np.bool_)) for w in elements)
    if not integral or not all(0 <= int(w) < 2**32 for w in words):
        raise ValueError(f"{name} words must be integers in [0, 2**32), got {elements!r}")
    return words.astype(np.uint32)


def philox4x32_raw(counter, key) -> np.ndarray:
    """The raw generator, 4 x uint32 counter and 2 x uint32 key -> 4 x uint32, for reproducing noise.

    Compiled when the extension is built, numpy otherwise (same numbers: Random123's known answers).
    """
    from ._ext_loader import ext

    ctr, k = _words("counter", counter, 4), _words("key", key, 2)
    if ext is not None:
        return np.asarray(ext.philox4x32(ctr, k), dtype=np.uint32)
    return philox4x32(ctr, k)
