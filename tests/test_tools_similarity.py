"""Class similarity from a store: the per-class mean teacher distribution (by label or by the teacher's
top-1), the nearest classes and most confused pairs, on a store whose similarities are known in
advance, and `hf-tinyvit similarity`."""

import json

import numpy as np
import pytest
import torch

from hf_tinyvit import ClassSimilarity, class_similarity
from hf_tinyvit.cli import main
from hf_tinyvit.tools import class_similarity_matrix
from tools_testing import LEVELS, grey_dataset, grey_store


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey-similarity")
    dataset = grey_dataset(32)
    return {"dataset": dataset, "store": grey_store(root / "store", dataset, topk=3), "root": root}


def test_class_similarity_matrix_weights_samples_by_their_records():
    mean_probs = torch.tensor([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    sums, records = class_similarity_matrix(mean_probs, torch.tensor([3, 1, 2]), torch.tensor([0, 0, 2]), 3)
    assert records.tolist() == [4, 0, 2]
    np.testing.assert_allclose(sums[0] / records[0], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(sums[2] / records[2], [0.1, 0.1, 0.8])
    assert not sums[1].any()
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        class_similarity_matrix(mean_probs, torch.tensor([1, 1, 1]), torch.tensor([0, 3, 1]), 3)


def test_nearest_classes_and_pairs_of_a_known_matrix():
    matrix = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05], [np.nan, np.nan, np.nan]])
    similarity = ClassSimilarity(matrix, np.array([5, 5, 0]), "label", {0: "a", 1: "b", 2: "c"})
    assert similarity.nearest(1) == [[(1, 0.2)], [(0, 0.05)], []]
    assert similarity.nearest(5)[0] == [(1, 0.2), (2, 0.1)]
    assert similarity.pairs(5) == [(0, 1, pytest.approx(0.125))]  # pairs with the empty class are NaN
    text = similarity.to_markdown(1)
    assert "| a | 5 | 70.0% | b (20.00%) |" in text and "| c | 0 |  |  |" in text
    with pytest.raises(ValueError, match="n=0"):
        similarity.nearest(0)


def test_grey_store_neighbours_follow_the_grey_levels(grey):
    by_label = class_similarity(grey["store"], grey["dataset"])
    assert by_label.grouped_by == "label" and by_label.records.tolist() == [8 * 3] * len(LEVELS)
    np.testing.assert_allclose(by_label.matrix.sum(axis=1), 1.0, atol=1e-3)
    assert (np.diag(by_label.matrix) > 0.9).all()
    nearest = [row[0][0] for row in by_label.nearest(1)]
    # 40 -> 80 and 80 <-> 100; level 200 is so far from the rest that float16 stores 0 for all of them
    assert nearest[:3] == [1, 2, 1] and by_label.matrix[3, :3].max() < 1e-4
    assert by_label.pairs(1)[0][:2] == (1, 2)
    # a record's class taken from the teacher's own top-1 agrees when the teacher is right
    by_teacher = class_similarity(grey["store"])
    assert by_teacher.grouped_by == "teacher top-1"
    np.testing.assert_allclose(by_teacher.matrix, by_label.matrix, atol=1e-6)
    with pytest.raises(ValueError, match="fingerprint"):
        class_similarity(grey["store"], grey_dataset(32, seed=5))


def test_cli_similarity_writes_table_matrix_and_heatmap(grey, capsys):
    import datasets

    folder = grey["root"] / "grey-dataset"
    datasets.DatasetDict({"train": grey["dataset"], "test": grey["dataset"].select(range(4))}).save_to_disk(str(folder))
    out = grey["root"] / "similarity"
    result = main(["similarity", "--store", grey["store"], "--dataset", str(folder), "--output_dir", str(out)])
    payload = json.loads((out / "similarity.json").read_text())
    assert payload["grouped_by"] == "label" and payload["pairs"][0][:2] == [1, 2]
    np.testing.assert_allclose(payload["matrix"], result.matrix)
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| grey80 |" in (out / "similarity.md").read_text()
    assert "most confused pairs: grey80/grey100" in capsys.readouterr().out
    by_teacher = main(["similarity", "--store", grey["store"], "--dataset", "none", "--output_dir", str(out), "--no_plots"])
    assert by_teacher.grouped_by == "teacher top-1"
