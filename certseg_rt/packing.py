"""Packing: the samples of several images in one device batch, for evaluate and the bench's throughput rows.

A runner that packs (``can_pack``: torch-cuda fused and careful) offers ``sample_counts_many(xs, num, seed,
offset)``, each image's counts exactly what ``sample_counts`` gives it alone (its own noise stream: seed, sample
index), and ``pack_size(shape, num)``, how many images' ``num`` samples fit one batch.  Images are certified in
the fewest equal groups of at most that size (taken for the larger call, n); a last, smaller group is padded with
copies of its last image whose counts are dropped, so every sample of a data set runs at one batch size (reduced
precision's labels can depend on it; the record gives the batch and the images per batch).  Images are
independent: packing changes where their samples run, never which samples they get.

* ``certify_many``: the certificates of several images (the throughput rows), one at a time where a runner
  does not pack;
* ``for_each_image``: evaluate's hook: per dataset image the backend to certify it with, a ``Precounted`` view
  of its group's counts where the runner packs.
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from .certify import Certificate, certify
from .errors import CertsegError
from .runtime.sampling import equal_batches


def packs(backend) -> bool:
    return bool(getattr(backend, "can_pack", False))


class Precounted:
    """One image's view of its packed group: ``sample_counts`` answers the calls the group made for this image
    from their counts; any other call (another image, n or seed) is sampled by the backend itself, so a
    mismatch can cost time but never change a certificate.  Everything else is the backend's."""

    def __init__(self, backend, image: np.ndarray, counts: dict, sampling_seconds: float):
        self.backend = backend
        self._image = image
        self._counts = counts  # (num, seed, offset) -> int32 (K, H, W)
        self.sampling_seconds = sampling_seconds  # this image's share of its group's sampling time

    def sample_counts(self, x, num: int, seed: int, offset: int) -> np.ndarray:
        counts = self._counts.get((num, seed, offset))
        x = np.asarray(x)
        if counts is None or x.shape != self._image.shape or not np.array_equal(x, self._image):
            return self.backend.sample_counts(x, num, seed, offset)
        return counts

    def __getattr__(self, name):
        backend = self.__dict__.get("backend")
        if backend is None:
            raise AttributeError(name)
        return getattr(backend, name)


def group_size(backend, shape, num: int, count: int) -> int:
    """Images per group for `count` images of `shape`: the fewest equal groups of at most pack_size, so the last
    one is padded by fewer images than there are groups (the static-per-call rule, applied to images)."""
    return equal_batches(count, backend.pack_size(tuple(shape), num))[0]


def _groups(backend, images: list[np.ndarray], num: int) -> Iterator[tuple[list[np.ndarray], int]]:
    """(group, real): consecutive images of one shape, at most group_size of them, padded to that size."""
    i, sizes = 0, {}  # shape -> group size, fixed at the first group of that shape
    while i < len(images):
        shape = np.asarray(images[i]).shape
        size = sizes.setdefault(shape, group_size(backend, shape, num, len(images) - i))
        group = [images[i]]
        while len(group) < size and i + len(group) < len(images) and \
                np.asarray(images[i + len(group)]).shape == np.asarray(images[i]).shape:
            group.append(images[i + len(group)])
        real = len(group)
        if i > 0 or i + real < len(images):  # a data set of several groups: one batch size for all
            group += [group[-1]] * (size - real)
        yield group, real
        i += real


def _count_group(backend, group, *, n0: int, n: int, seed: int):
    start = time.perf_counter()
    counts0 = backend.sample_counts_many(group, n0, seed, 0)
    counts = backend.sample_counts_many(group, n, seed, n0)
    return counts0, counts, time.perf_counter() - start


def certify_many(backend, images: list[np.ndarray], *, n0: int = 10, n: int = 100, tau: float = 0.75,
                 alpha: float = 0.001, seed: int = 0, correction: str = "holm") -> list[Certificate]:
    """CERTIFY for each image, with the same seed for each (as evaluate does); packed where the backend can."""
    kw = {"n0": n0, "n": n, "tau": tau, "alpha": alpha, "seed": seed, "correction": correction}
    if not packs(backend):
        return [certify(backend, x, **kw) for x in images]
    certs = []
    for group, real in _groups(backend, images, max(n0, n)):
        counts0, counts, seconds = _count_group(backend, group, n0=n0, n=n, seed=seed)
        for i in range(real):
            view = Precounted(backend, np.asarray(group[i]), {(n0, seed, 0): counts0[i], (n, seed, n0): counts[i]},
                              seconds / real)
            cert = certify(view, group[i], **kw)
            cert.record["seconds"] = round(cert.record["seconds"] + view.sampling_seconds, 4)
            certs.append(cert)
    return certs


def evaluate_input(sample, backend) -> np.ndarray:
    """The image as evaluate.evaluate_sample certifies it: read, and fitted to the model's input (Precounted
    compares the two, so should they ever differ the image is simply sampled alone)."""
    from .io import read_image
    from .resize import fit_to_model

    image = read_image(sample.image, backend.channels)
    return fit_to_model(image, getattr(backend, "input_size", None), getattr(backend, "adapter", None)).image(image)


def for_each_image(todo, backend, params: dict, model_input=evaluate_input) -> Iterator:
    """Evaluate's hook: (sample, backend to certify it with) for each sample.  Where the backend packs, the images
    go in groups and each sample gets a Precounted view of its group's counts; an image that cannot be read, or a
    group the backend refuses, is certified alone (evaluate then reports its error as usual)."""
    if not packs(backend):
        for sample in todo:
            yield sample, backend
        return
    n0, n, seed = params["n0"], params["n"], params["seed"]
    pending, several, sizes = list(todo), False, {}  # sizes: shape -> group size, fixed at its first group
    while pending:
        head = pending.pop(0)
        try:
            first = model_input(head, backend)
            shape = np.asarray(first).shape
            size = sizes.setdefault(shape, group_size(backend, shape, max(n0, n), len(pending) + 1))
        except (CertsegError, ValueError, OSError):
            yield head, backend
            continue
        members, images = [head], [first]
        while len(members) < size and pending:
            try:
                x = model_input(pending[0], backend)
            except (CertsegError, ValueError, OSError):
                break  # certified alone, in its turn
            if np.asarray(x).shape != np.asarray(first).shape:
                break
            members.append(pending.pop(0))
            images.append(x)
        several = several or bool(pending)
        group = images + [images[-1]] * (size - len(images) if several else 0)  # one batch size for the data set
        try:
            counts0, counts, seconds = _count_group(backend, group, n0=n0, n=n, seed=seed)
        except (CertsegError, ValueError):
            for sample in members:
                yield sample, backend
            continue
        for i, sample in enumerate(members):
            yield sample, Precounted(backend, np.asarray(images[i]),
                                     {(n0, seed, 0): counts0[i], (n, seed, n0): counts[i]}, seconds / len(members))
