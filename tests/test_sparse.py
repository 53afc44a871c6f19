import numpy as np
import pytest
import torch

from hf_tinyvit.store.format import (
    index_dtype,
    sparse_to_dense,
    teacher_hard_labels,
    topk_probabilities,
)


@pytest.mark.parametrize("num_labels,dtype", [(10, np.uint8), (256, np.uint8), (257, np.uint16), (21841, np.uint16), (70000, np.uint32)])
def test_index_dtype_is_smallest_that_fits(num_labels, dtype):
    assert index_dtype(num_labels) == np.dtype(dtype)


def test_topk_then_dense_follows_the_paper_formula():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    values, indices = topk_probabilities(logits, 3)
    assert values.dtype == torch.float16 and values.shape == (8, 3)
    probs = torch.softmax(logits, 1)
    assert torch.equal(indices, probs.topk(3, 1).indices)
    dense = sparse_to_dense(values, indices, 10)
    assert torch.allclose(dense.sum(1), torch.ones(8), atol=1e-3)
    for row in range(8):
        kept = set(indices[row].tolist())
        leftover = (1 - values[row].float().sum()) / 7
        for c in range(10):
            want = values[row][indices[row].tolist().index(c)].float() if c in kept else leftover
            assert torch.isclose(dense[row, c], want, atol=1e-6)
    assert torch.equal(teacher_hard_labels(indices), logits.argmax(1))


def test_full_k_reproduces_the_distribution():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    values, indices = topk_probabilities(logits, 5)
    assert torch.allclose(sparse_to_dense(values, indices, 5), torch.softmax(logits, 1), atol=1e-3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"topk=12 must lie in \[1, num_labels=10\]"):
        topk_probabilities(torch.zeros(2, 10), 12)
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="row 1 contains NaN or inf"):
        topk_probabilities(bad, 2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\]"):
        sparse_to_dense(torch.ones(1, 2) / 2, torch.tensor([[0, 9]]), 4)
