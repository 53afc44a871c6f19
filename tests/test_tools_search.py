"""Student search: the search space's moves, feature-map sizes and MAC counts checked against the real
model, the Pareto front, the proxy score (deterministic, and it learns), the search under a parameter
budget on a tiny store, its saved outputs, and `hf-tinyvit search`."""

import json

import numpy as np
import pytest
import torch

from hf_tinyvit import (
    ProxySettings,
    SearchSpace,
    TinyViTConfig,
    TinyViTForImageClassification,
    TinyViTModel,
    measure_student,
    pareto_front,
    search_students,
)
from hf_tinyvit.cli import main
from hf_tinyvit.tools.search import ProxyScorer, count_macs, feature_map_sizes
from tools_testing import grey_dataset, grey_store

SEED = TinyViTConfig(
    embed_dims=[32, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2], window_sizes=[2, 2, 2, 1],
    image_size=16, num_labels=4,
)  # fmt: skip
PROXY = ProxySettings(train_samples=48, eval_samples=16, epochs=8, batch_size=8, learning_rate=1e-2)


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey-search")
    dataset = grey_dataset(64)
    return {"dataset": dataset, "store": grey_store(root / "store", dataset), "root": root}


@pytest.mark.parametrize("image_size", [16, 33, 224])
def test_feature_map_sizes_are_the_models(image_size):
    config = TinyViTConfig(embed_dims=[32, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                           window_sizes=[2, 2, 2, 2], image_size=image_size)  # fmt: skip
    model = TinyViTModel(config).eval()
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, image_size, image_size), output_hidden_states=True)
    # hidden_states: the stem's map, then each stage's map
    assert feature_map_sizes(image_size, 4) == [h.shape[-1] for h in outputs.hidden_states[1:]]


def test_pareto_front_keeps_the_undominated_points():
    points = np.array([[1, 5], [2, 4], [2, 3], [3, 1], [1, 5], [0.5, 4]])
    assert pareto_front(points).tolist() == [True, True, False, True, True, False]
    with pytest.raises(ValueError, match="objectives"):
        pareto_front(np.array([1, 2, 3]))


def test_every_move_changes_one_factor_and_builds_a_valid_config():
    space = SearchSpace()
    arch = space.architecture(TinyViTConfig.from_preset("tinyvit-micro"), 32)
    assert arch.window_sizes == (4, 4, 2, 1)  # windows clipped to the 8/4/2/1 maps at 32 px
    moves = space.neighbours(arch, 32)
    assert len({a for _, a in moves}) == len(moves) and arch not in {a for _, a in moves}
    for change, moved in moves:
        differing = [
            name for name in ("embed_dims", "depths", "window_sizes", "mlp_ratio", "mbconv_expand_ratio")
            if getattr(moved, name) != getattr(arch, name)
        ]  # fmt: skip
        assert differing == [change.split("[")[0].split(" ")[0]], change
        assert all(d % 32 == 0 for d in moved.embed_dims) and list(moved.embed_dims) == sorted(moved.embed_dims)
        assert all(w <= m for w, m in zip(moved.window_sizes[1:], feature_map_sizes(32, 4)[1:]))
        config = moved.to_config(space.head_dim, image_size=32, num_labels=10)
        assert config.num_heads[1:] == [d // 32 for d in moved.embed_dims[1:]]
    assert "depths[2] 2->1" in dict(moves) and "mlp_ratio 4->3" in dict(moves)

    with pytest.raises(ValueError, match="head_dim=32"):
        space.architecture(TinyViTConfig(embed_dims=[32, 64, 96, 128], num_heads=[1, 1, 3, 4], depths=[1, 1, 1, 1],
                                         window_sizes=[2, 2, 2, 2]))  # fmt: skip
    with pytest.raises(ValueError, match="multiple of head_dim"):
        SearchSpace(head_dim=32, width_step=16)


def test_macs_match_the_published_count_and_parameters_the_model():
    config = TinyViTConfig.from_preset("tinyvit-5m-224", num_labels=1000)
    # TinyViT's paper gives 1.3G MACs for TinyViT-5M at 224
    assert count_macs(config, 224) == pytest.approx(1.3e9, rel=0.05)
    cost = measure_student(SEED, batch_size=4, repeats=1, warmup=0, min_seconds=0.05)
    assert cost.parameters == TinyViTForImageClassification(SEED).num_parameters()
    assert cost.macs == count_macs(SEED, 16) > 0 and cost.images_per_second > 0
    with pytest.raises(ValueError, match="batch_size=0"):
        measure_student(SEED, batch_size=0)


def test_proxy_score_is_deterministic_and_learns(grey):
    scorer = ProxyScorer(grey["store"], grey["dataset"], PROXY)
    assert not set(scorer.train_ids) & set(scorer.eval_ids)
    first, _ = scorer.score(SEED)
    again, _ = scorer.score(SEED)
    assert first == again
    untrained = ProxyScorer(grey["store"], grey["dataset"],
                            ProxySettings(**{**PROXY.__dict__, "learning_rate": 1e-9}))  # fmt: skip
    assert first >= 0.5 and first > untrained.score(SEED)[0] + 0.25  # 4 classes: chance is 0.25
    with pytest.raises(ValueError, match="exceed the store's 64 samples"):
        ProxyScorer(grey["store"], grey["dataset"], ProxySettings(train_samples=60, eval_samples=8))


def test_search_respects_the_budget_and_saves_its_results(grey):
    seed_params = measure_student(SEED, batch_size=4, repeats=1, warmup=0, min_seconds=0.05).parameters
    budget = seed_params + 5_000  # room for a lighter or slightly heavier move, not for a wider stage
    cheap = ProxySettings(train_samples=16, eval_samples=16, epochs=2, batch_size=8)  # ranks need not be meaningful
    result = search_students(
        grey["store"], grey["dataset"], seed=SEED, max_params=budget, num_candidates=3, proxy=cheap, batch_size=8,
        throughput_seconds=0.1,
    )
    candidates = result.candidates
    assert candidates[0].change == "seed" and candidates[0].parent is None
    assert sum(c.feasible for c in candidates) == 3
    for c in candidates:
        assert (c.cost.parameters <= budget) == (c.status == "scored"), c.change
        assert (c.proxy_accuracy is None) == (not c.feasible)
        if c.parent is not None:  # each candidate is one move from its parent
            parent = candidates[c.parent].architecture
            assert c.architecture in {a for _, a in SearchSpace().neighbours(parent, 16)}
    assert result.best.proxy_accuracy == max(c.proxy_accuracy for c in candidates if c.feasible)

    out = result.save(grey["root"] / "search")
    saved = TinyViTConfig.from_pretrained(str(out / "best-config"))
    assert SearchSpace().architecture(saved) == result.best.architecture and saved.num_labels == 4
    payload = json.loads((out / "search.json").read_text())
    assert payload["best"] == result.best.index and len(payload["candidates"]) == len(candidates)
    assert "| 0 | seed |" in (out / "search.md").read_text()
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_refuses_a_seed_outside_its_own_constraints(grey):
    with pytest.raises(ValueError, match="over parameter budget"):
        search_students(grey["store"], grey["dataset"], seed=SEED, max_params=1000, proxy=PROXY, throughput_seconds=0.05)
    with pytest.raises(ValueError, match="below throughput floor"):
        search_students(grey["store"], grey["dataset"], seed=SEED, max_params=1e9, min_throughput=1e12, proxy=PROXY,
                        throughput_seconds=0.05)  # fmt: skip
    with pytest.raises(ValueError, match="neither a TinyViT preset"):
        search_students(grey["store"], grey["dataset"], seed="tinyvit-99m", max_params=1e9, proxy=PROXY)


def test_cli_search(grey, capsys):
    import datasets

    folder = grey["root"] / "grey-dataset"
    datasets.DatasetDict({"train": grey["dataset"], "test": grey["dataset"].select(range(4))}).save_to_disk(str(folder))
    SEED.save_pretrained(str(grey["root"] / "seed-config"))
    out = grey["root"] / "cli-search"
    result = main([
        "search", "--store", grey["store"], "--dataset", str(folder), "--seed_config", str(grey["root"] / "seed-config"),
        "--max_params", "1e6", "--candidates", "2", "--batch_size", "8", "--train_samples", "24", "--eval_samples", "8",
        "--proxy_epochs", "2", "--proxy_batch_size", "8", "--output_dir", str(out), "--no_plots", "--throughput_seconds", "0.05",
    ])  # fmt: skip
    assert sum(c.feasible for c in result.candidates) == 2 and (out / "best-config" / "config.json").is_file()
    assert not (out / "search.png").exists()
    assert "best: candidate" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["search", "--store", grey["store"], "--max_params", "1e6", "--output_dir", str(out), "--proxy_epochs", "0"])
