"""The sqrt8 top-k encoding (store/codec.py): exact top-1 class and class set, bounded probability error,
the leftover mass kept, finite KL, and refusals naming the bad value."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hf_tinyvit.store.codec import SQRT8_SCALE, check_topk_encoding, decode_sqrt8, encode_sqrt8
from hf_tinyvit.store.format import sparse_to_dense, topk_probabilities

STEP = 1.0 / SQRT8_SCALE


def teacher_topk(seed: int, records: int, num_labels: int, k: int, peak: float = 8.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(records, num_labels, generator=generator) * 2.0
    logits[torch.arange(records), torch.randint(0, num_labels, (records,), generator=generator)] += peak
    values, indices = torch.softmax(logits, dim=1).topk(k, dim=1)
    return values.numpy(), indices.numpy()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(dim=1)


@pytest.mark.parametrize("num_labels,k", [(10, 3), (1000, 10), (21841, 100)])
def test_round_trip_keeps_the_top1_the_class_set_and_each_probability_within_a_step(num_labels, k):
    values, indices = teacher_topk(k, 512, num_labels, k)
    slots, codes = encode_sqrt8(values, indices, num_labels)
    assert codes.dtype == np.uint8 and slots.shape == codes.shape == (512, k)
    decoded, classes = decode_sqrt8(slots, codes)
    assert decoded.dtype == np.float32 and classes.dtype == np.int64
    np.testing.assert_array_equal(classes[:, 0], indices[:, 0])  # DeiT's hard label is exact
    np.testing.assert_array_equal(np.sort(classes, axis=1), np.sort(indices, axis=1))
    # every other class: |sqrt(p) - sqrt(p')| <= step / 2, so |p - p'| <= step * sqrt(p) + step^2 / 4
    original = {(r, c): v for r in range(512) for c, v in zip(indices[r], values[r])}
    for r in range(512):
        for c, v in zip(classes[r, 1:], decoded[r, 1:]):
            p = original[(r, int(c))]
            assert abs(v - p) <= STEP * np.sqrt(p) + STEP**2 / 4 + STEP**2 + 1e-7
    # the others by decreasing probability, as topk_probabilities lays them out
    assert (np.diff(decoded[:, 1:], axis=1) <= 0).all()
    # the leftover mass comes back within a step of the square root
    left, back = 1 - values.astype(np.float64).sum(1), 1 - decoded.astype(np.float64).sum(1)
    assert (np.abs(np.sqrt(np.clip(back, 0, 1)) - np.sqrt(np.clip(left, 0, 1))) <= STEP + 1e-6).all()


def test_rebuilt_distribution_stays_close_and_finite_even_for_a_confident_teacher():
    for peak in (8.0, 20.0):  # 20: top-1 ~ 0.9999, a leftover far below float16's spacing near 1
        values, indices = teacher_topk(1, 256, 1000, 10, peak=peak)
        exact = sparse_to_dense(torch.from_numpy(values).double(), torch.from_numpy(indices), 1000)
        decoded, classes = decode_sqrt8(*encode_sqrt8(values, indices, 1000))
        rebuilt = sparse_to_dense(torch.from_numpy(decoded).double(), torch.from_numpy(classes), 1000)
        divergence = kl(exact, rebuilt)
        assert torch.isfinite(divergence).all()
        assert divergence.mean() < 1e-3 and divergence.max() < 1e-2
        assert (rebuilt - exact).abs().max() < 0.02
        # positive leftover stays positive: no class outside the top k loses all its mass
        positive = 1 - values.astype(np.float64).sum(1) > 0
        assert (1 - decoded.astype(np.float64).sum(1) > 0)[positive].all()


def test_encoding_is_deterministic_and_ties_decode_by_class_index():
    values = np.array([[0.5, 0.2, 0.2, 0.1]], dtype=np.float32)
    indices = np.array([[7, 9, 3, 0]])
    slots, codes = encode_sqrt8(values, indices, 10)
    np.testing.assert_array_equal(slots, [[7, 0, 3, 6]])  # top-1, then 0, 3, 9 as first index and gaps
    decoded, classes = decode_sqrt8(slots, codes)
    np.testing.assert_array_equal(classes, [[7, 3, 9, 0]])
    again = encode_sqrt8(values, indices, 10)
    assert np.array_equal(again[0], slots) and np.array_equal(again[1], codes)


def test_index_type_follows_the_class_count_and_k1_keeps_only_the_leftover():
    for num_labels, dtype in ((256, np.uint8), (21841, np.uint16), (70000, np.uint32)):
        slots, _ = encode_sqrt8(np.array([[0.6, 0.3]]), np.array([[num_labels - 1, 0]]), num_labels)
        assert slots.dtype == dtype
    slots, codes = encode_sqrt8(np.array([[0.75]]), np.array([[4]]), 5)
    decoded, classes = decode_sqrt8(slots, codes)
    assert classes.tolist() == [[4]] and abs(decoded[0, 0] - 0.75) < 2 * STEP


def test_float16_store_values_encode_too():
    values, indices = topk_probabilities(torch.randn(64, 100) * 3, 5)
    decoded, classes = decode_sqrt8(*encode_sqrt8(values.numpy(), indices.numpy(), 100))
    assert np.array_equal(classes[:, 0], indices[:, 0].numpy())


@pytest.mark.parametrize(
    "values,indices,num_labels,message",
    [
        ([[0.5, 0.4]], [[1, 1]], 4, r"record 0 repeats a class index: \[1, 1\]"),
        ([[0.5, 0.4]], [[1, 4]], 4, r"record 0 has class indices outside \[0, 3\]"),
        ([[0.5, 1.5]], [[1, 2]], 4, r"record 0 has top-k probabilities outside \[0, 1\]"),
        ([[0.5, float("nan")]], [[1, 2]], 4, r"outside \[0, 1\]"),
        ([[0.5, 0.4]], [[1, 2, 3]], 4, r"must both be \(records, k\)"),
        ([[0.2] * 5], [[0, 1, 2, 3, 4]], 4, r"topk=5 must lie in \[1, num_labels=4\]"),
    ],
)
def test_bad_input_is_refused_by_name(values, indices, num_labels, message):
    with pytest.raises(ValueError, match=message):
        encode_sqrt8(np.array(values), np.array(indices), num_labels)


def test_encoding_names_are_checked():
    assert check_topk_encoding("sqrt8") == "sqrt8"
    with pytest.raises(ValueError, match=r"topk_encoding='int4'; accepted: \['float16', 'sqrt8'\]"):
        check_topk_encoding("int4")
    with pytest.raises(ValueError, match="must both be"):
        decode_sqrt8(np.zeros((2, 3), np.uint16), np.zeros((2, 2), np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=300),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.floats(min_value=0.0, max_value=30.0),
)
@example(num_labels=72, k=8, seed=0, peak=22.75)  # float32 top-8 summing past 1: the leftover must not vanish
def test_any_distribution_keeps_its_classes_and_a_finite_kl(num_labels, k, seed, peak):
    k = min(k, num_labels)
    values, indices = teacher_topk(seed, 4, num_labels, k, peak=peak)
    decoded, classes = decode_sqrt8(*encode_sqrt8(values, indices, num_labels))
    assert np.array_equal(classes[:, 0], indices[:, 0])
    assert np.array_equal(np.sort(classes, 1), np.sort(indices, 1))
    exact = sparse_to_dense(torch.from_numpy(values).double(), torch.from_numpy(indices), num_labels)
    rebuilt = sparse_to_dense(torch.from_numpy(decoded).double(), torch.from_numpy(classes), num_labels)
    assert torch.isfinite(kl(exact, rebuilt)).all()
    assert (rebuilt - exact).abs().max() <= 2 * k * STEP + 1e-6
