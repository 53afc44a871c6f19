"""The hard-sample audit: per-sample distributions averaged over stored epochs, the audit's rules and
ranking, precision and recall against known wrong labels (checked against scikit-learn's curve), the
relabelled copy, refusals of a dataset the store was not built from, and `hf-tinyvit audit`."""

import json

import numpy as np
import pytest
import torch

from hf_tinyvit import (
    AugmentationRecipe,
    LabelAudit,
    TeacherLogitStore,
    audit_labels,
    corrupt_labels,
    load_image_dataset,
    precision_recall_curve,
    sparse_to_dense,
)
from hf_tinyvit.cli import main
from hf_tinyvit.tools import (
    SampleDistributions,
    accumulate_distributions,
    audit_distributions,
    iter_sample_distributions,
)
from tools_testing import grey_dataset, grey_store


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    dataset = grey_dataset(32)
    return {"dataset": dataset, "store": grey_store(root / "store", dataset), "root": root}


def test_accumulate_distributions_averages_the_rebuilt_records_of_the_epochs_used():
    values = torch.tensor([[[0.7, 0.2], [0.5, 0.4]], [[0.6, 0.3], [0.9, 0.05]]])  # (epochs, samples, k)
    indices = torch.tensor([[[2, 0], [1, 3]], [[2, 1], [0, 1]]])
    used = torch.tensor([[True, True], [True, False]])
    mean, counts, num = accumulate_distributions(values, indices, used, num_labels=4)
    first = (sparse_to_dense(values[0], indices[0], 4)[0] + sparse_to_dense(values[1], indices[1], 4)[0]) / 2
    torch.testing.assert_close(mean[0], first)
    torch.testing.assert_close(mean[1], sparse_to_dense(values[0], indices[0], 4)[1])  # epoch 1 left out
    assert counts.tolist() == [[1, 1, 2, 0], [0, 1, 0, 1]] and num.tolist() == [2, 1]
    torch.testing.assert_close(mean.sum(dim=1), torch.ones(2))

    none_used = accumulate_distributions(values, indices, torch.zeros(2, 2, dtype=torch.bool), 4)
    assert none_used[2].tolist() == [0, 0] and not none_used[0].any()
    with pytest.raises(ValueError, match="must be"):
        accumulate_distributions(values, indices, used[:1], 4)


def test_precision_recall_curve_matches_scikit_learn():
    from sklearn.metrics import precision_recall_curve as sk_curve

    rng = np.random.default_rng(0)
    positives = rng.random(200) < 0.3
    # wrong labels get lower probabilities on average, with ties, as float16 stores make them
    scores = np.round(np.where(positives, rng.random(200) * 0.6, 0.3 + rng.random(200) * 0.7), 2)
    ours = precision_recall_curve(scores, positives)
    precision, recall, thresholds = sk_curve(positives, -scores)  # sklearn flags high scores
    expected = {float(-t): (p, r) for p, r, t in zip(precision, recall, thresholds)}
    assert len(ours["thresholds"]) == len(expected)
    for t, p, r in zip(ours["thresholds"], ours["precision"], ours["recall"]):
        assert expected[float(t)] == pytest.approx((p, r))
    assert ours["recall"][-1] == 1.0
    with pytest.raises(ValueError, match="no positive"):
        precision_recall_curve(scores, np.zeros(200, dtype=bool))


def _distributions(rows, counts, num_records):
    rows = torch.tensor(rows, dtype=torch.float32)
    return SampleDistributions(
        np.arange(len(rows)), rows, torch.tensor(counts, dtype=torch.int32), torch.tensor(num_records)
    )


def test_audit_rules_ranking_and_refusals():
    distributions = _distributions(
        [
            [0.90, 0.05, 0.05],  # label 0, believed
            [0.60, 0.35, 0.05],  # label 1 at 35%: believed
            [0.03, 0.95, 0.02],  # label 0 at 3%: suspect, teacher says 1 (95%)
            [0.50, 0.12, 0.38],  # label 1 at 12% but outside the top-k in 3 of 4 epochs: suspect
            [0.08, 0.30, 0.62],  # label 0 at 8%: suspect, teacher says 2 (62%)
            [0.00, 0.00, 0.00],  # only mixed records: not judged
        ],
        [[4, 4, 0], [4, 4, 0], [1, 4, 3], [4, 1, 3], [2, 4, 4], [0, 0, 0]],
        [4, 4, 4, 4, 4, 0],
    )
    audit = audit_distributions(distributions, [0, 1, 0, 1, 0, 2], threshold=0.1, min_topk_fraction=0.5)
    assert audit.suspect.tolist() == [False, False, True, True, True, False]
    assert audit.suspect_ids().tolist() == [2, 4, 3]  # by the teacher's confidence in its class
    assert audit.proposed_class[[2, 3, 4]].tolist() == [1, 0, 2]
    assert audit.teacher_class[:5].tolist() == [0, 0, 1, 0, 2]
    assert audit.label_topk_fraction[3] == 0.25
    assert not audit.counted[5]
    table = audit.table()
    assert table["sample_id"] == [2, 4, 3] and table["rank"] == [1, 2, 3]
    assert table["teacher_probability"] == [0.95, 0.62, 0.5]

    stricter = audit_distributions(distributions, [0, 1, 0, 1, 0, 2], threshold=0.05, min_topk_fraction=0.0)
    assert stricter.suspect_ids().tolist() == [2]
    assert audit.precision_recall([2, 3, 1]) == {
        "precision": 2 / 3, "recall": 2 / 3, "flagged": 3, "wrong": 3, "true_positives": 2,
    }  # fmt: skip
    halves = LabelAudit.concatenate([
        audit_distributions(_distributions(r, c, n), l, threshold=0.1)
        for r, c, n, l in [
            ([[0.9, 0.05, 0.05], [0.6, 0.35, 0.05]], [[4, 4, 0], [4, 4, 0]], [4, 4], [0, 1]),
            ([[0.03, 0.95, 0.02]], [[1, 4, 3]], [4], [0]),
        ]
    ])
    assert halves.label_probability.tolist() == pytest.approx([0.9, 0.35, 0.03])

    with pytest.raises(ValueError, match="sample_id=1 has label=3"):
        audit_distributions(distributions, [0, 3, 0, 1, 0, 2])
    with pytest.raises(ValueError, match="threshold=0"):
        audit_distributions(distributions, [0, 1, 0, 1, 0, 2], threshold=0.0)
    with pytest.raises(ValueError, match="not seen"):
        audit.precision_recall([99])


def test_audit_finds_every_flipped_label_of_the_grey_store_and_relabelling_restores_them(grey):
    dataset = grey["dataset"]
    noisy, flipped = corrupt_labels(dataset, 0.25, seed=3)
    audit = audit_labels(grey["store"], noisy)
    assert len(audit) == len(dataset) and (audit.num_records == 3).all()
    assert sorted(audit.suspect_ids().tolist()) == flipped.tolist()
    assert audit.precision_recall(flipped) == {
        "precision": 1.0, "recall": 1.0, "flagged": len(flipped), "wrong": len(flipped), "true_positives": len(flipped),
    }  # fmt: skip
    truth = np.array(dataset["label"])
    assert (audit.proposed_class[flipped] == truth[flipped]).all()
    curve = audit.precision_recall_curve(flipped)
    assert curve["precision"][np.searchsorted(curve["recall"], 1.0)] == 1.0

    relabelled, changed = audit.relabelled(noisy, min_confidence=0.5)
    assert changed.tolist() == audit.suspect_ids().tolist()
    assert relabelled["label"] == dataset["label"] and relabelled.features == dataset.features
    assert relabelled["image"][0].tobytes() == dataset["image"][0].tobytes()
    # the clean dataset has nothing to flag
    assert not audit_labels(grey["store"], dataset).suspect.any()


def test_reading_in_chunks_changes_nothing(grey):
    store = TeacherLogitStore.open(grey["store"])
    whole = list(iter_sample_distributions(store))
    assert len(whole) == 1
    parts = list(iter_sample_distributions(store, chunk_size=5))
    assert [len(p) for p in parts] == [5] * 6 + [2]
    joined = SampleDistributions.concatenate(parts)
    assert np.array_equal(joined.sample_ids, np.arange(32))
    torch.testing.assert_close(joined.mean_probs, whole[0].mean_probs)
    assert torch.equal(joined.topk_counts, whole[0].topk_counts) and torch.equal(joined.num_records, whole[0].num_records)


def test_audit_refuses_a_dataset_the_store_was_not_built_from(grey):
    other = grey_dataset(32, seed=1)  # other pixels, same size
    with pytest.raises(ValueError, match="fingerprint"):
        audit_labels(grey["store"], other)
    with pytest.raises(ValueError, match="32"):
        audit_labels(grey["store"], grey["dataset"].select(range(30)))
    with pytest.raises(ValueError, match="column 'target'"):
        audit_labels(grey["store"], grey["dataset"], label_column="target")
    with pytest.raises(ValueError, match=r"epochs \[7\]"):
        audit_labels(grey["store"], grey["dataset"], epochs=[7])


def test_mixed_records_are_never_counted(tmp_path):
    dataset = grey_dataset(16)
    always_mixed = AugmentationRecipe(image_size=16, auto_augment=None, reprob=0.0, mixup_alpha=0.8, mixup_prob=1.0)
    audit = audit_labels(grey_store(tmp_path / "mixed", dataset, num_epochs=2, recipe=always_mixed), dataset)
    assert (audit.num_records == 0).all() and not audit.suspect.any()


def test_cli_audit_measures_writes_and_relabels(grey, capsys):
    import datasets

    splits_dir = grey["root"] / "grey-dataset"
    datasets.DatasetDict({"train": grey["dataset"], "test": grey["dataset"].select(range(4))}).save_to_disk(str(splits_dir))
    out, relabel = grey["root"] / "audit", grey["root"] / "relabelled"
    audit = main([
        "audit", "--store", grey["store"], "--dataset", str(splits_dir), "--corrupt_labels", "0.25",
        "--corrupt_seed", "3", "--output_dir", str(out), "--relabel", str(relabel), "--top", "4",
    ])  # fmt: skip
    summary = json.loads((out / "audit.json").read_text())
    assert summary["precision"] == 1.0 and summary["recall"] == 1.0 and summary["flagged"] == 8
    assert summary["relabelled"] == 8 and summary["suspects"] == int(audit.suspect.sum())
    for name in ("suspects.png", "precision_recall.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rows = (out / "suspects.csv").read_text().splitlines()
    assert rows[0].startswith("rank,sample_id,label,label_name,teacher_class") and len(rows) == 9
    reloaded = load_image_dataset(str(relabel))
    assert reloaded["train"]["label"] == grey["dataset"]["label"] and len(reloaded["test"]) == 4
    assert "precision" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["audit", "--store", grey["store"], "--output_dir", str(out), "--corrupt_labels", "1.5"])

