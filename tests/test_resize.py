"""Resizing to the model's input and back: the operator norm that turns the model's radius into the
image's, and nearest-neighbour labels that keep abstentions."""
import numpy as np
import pytest

from certseg_rt.resize import _resize_plane, fit_to_model


@pytest.mark.parametrize("shape", [(200, 160), (256, 256), (100, 128), (64, 64), (128, 300)])
def test_operator_norm_bounds_every_perturbation_and_is_attained(shape):
    fit = fit_to_model(np.zeros((1, *shape), np.float32), (128, 128))
    norm = fit.operator_norm
    rng = np.random.default_rng(sum(shape))
    for _ in range(10):  # |A d| <= |A| |d| for any d: the radius R / |A| is safe
        d = rng.standard_normal(shape).astype(np.float32)
        assert np.linalg.norm(_resize_plane(d, (128, 128))) <= norm * np.linalg.norm(d) * (1 + 1e-4)
    # ...and not loose: power iteration on A^T A through the resize itself reaches |A|.
    v = rng.standard_normal(shape)
    for _ in range(200):
        a = _resize_plane(v.astype(np.float32), (128, 128)).astype(np.float64)
        v = _adjoint(a, shape)
        v /= np.linalg.norm(v)
    attained = np.linalg.norm(_resize_plane(v.astype(np.float32), (128, 128)))
    assert norm * 0.99 <= attained <= norm * (1 + 1e-4)


def _adjoint(a, shape):
    """A^T applied to a, with A's separable factors read off the resize of identity matrices."""
    rows = _resize_plane(np.eye(shape[0], dtype=np.float32), (shape[0], a.shape[0])).T  # (out_h, in_h)
    cols = _resize_plane(np.eye(shape[1], dtype=np.float32), (shape[1], a.shape[1])).T  # (out_w, in_w)
    return rows.T.astype(np.float64) @ a @ cols.astype(np.float64)


def test_shrinking_and_enlarging_by_two():
    assert fit_to_model(np.zeros((3, 256, 256)), (128, 128)).operator_norm == pytest.approx(0.5, abs=0.01)
    assert fit_to_model(np.zeros((3, 64, 64)), (128, 128)).operator_norm == pytest.approx(2.0, abs=0.01)


def test_same_size_is_the_identity():
    x = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    fit = fit_to_model(x, (128, 128))
    assert not fit.resized and fit.image(x) is x and fit.radius_at_input(0.17) == 0.17
    assert fit_to_model(x, None).model_size == (128, 128)


def test_image_stays_in_range_and_labels_map_back_by_nearest_neighbour():
    x = np.random.default_rng(1).random((3, 90, 70)).astype(np.float32)
    fit = fit_to_model(x, (128, 128))
    y = fit.image(x)
    assert y.shape == (3, 128, 128) and 0 <= y.min() and y.max() <= 1
    labels = np.zeros((128, 128), np.uint8)
    labels[:, 64:] = 1
    labels[:10] = 255  # abstentions stay abstentions: no label is ever interpolated
    back = fit.labels_back(labels)
    assert back.shape == (90, 70) and set(np.unique(back).tolist()) == {0, 1, 255}
    assert (back[:5] == 255).all() and (back[50:, :30] == 0).all() and (back[50:, 40:] == 1).all()
