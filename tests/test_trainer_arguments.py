"""DistillationTrainingArguments: ranges and cross-field rules fail at construction, naming the value."""

import pytest
from transformers import HfArgumentParser

from hf_tinyvit.training import DistillationTrainingArguments


def make(tmp_path, **kwargs):
    return DistillationTrainingArguments(output_dir=str(tmp_path), report_to=[], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distillation_type": "feature"}, "distillation_type='feature' is not a distillation mode; accepted: \\['none', 'hard', 'soft', 'stored'\\]"),
        ({"alpha": 1.5}, r"alpha=1.5 must lie in \[0, 1\]"),
        ({"tau": 0.0}, "tau=0.0 must be > 0"),
        ({"mixup_alpha": -0.1}, "mixup_alpha=-0.1 must be >= 0"),
        ({"cutmix_alpha": -1.0}, "cutmix_alpha=-1.0 must be >= 0"),
        ({"layer_lr_decay": 0.0}, r"layer_lr_decay=0.0 must lie in \(0, 1\]"),
        ({"layer_lr_decay": 1.2}, r"layer_lr_decay=1.2 must lie in \(0, 1\]"),
        ({"label_smoothing_factor": 1.0}, r"label_smoothing_factor=1.0 must lie in \[0, 1\)"),
        (
            {"distillation_type": "stored", "teacher_logits": "store", "teacher": "timm:resnet18"},
            "distillation_type='stored' runs no teacher",
        ),
        ({"distillation_type": "none", "teacher": "some/model"}, "distillation_type='none' trains on labels only"),
        ({"distillation_type": "none", "teacher_logits": "store"}, "teacher_logits='store' was given"),
        (
            {"distillation_type": "hard", "teacher": "some/model", "teacher_logits": "store"},
            "takes one teacher source",
        ),
        ({"distillation_type": "soft", "teacher_weights": "w.pth"}, "teacher_weights='w.pth' needs a teacher"),
        (
            {"distillation_type": "stored", "teacher_logits": "store", "mixup_alpha": 0.8},
            "mixup_alpha=0.8 / cutmix_alpha=None apply to online runs only",
        ),
    ],
)
def test_invalid_arguments_raise_naming_the_value(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)


def test_valid_combinations_construct(tmp_path):
    stored = make(tmp_path, distillation_type="stored", teacher_logits="store", layer_lr_decay=0.8)
    assert stored.distillation_type == "stored" and stored.layer_lr_decay == 0.8
    soft = make(
        tmp_path, distillation_type="soft", teacher="timm:resnet18", teacher_weights="w.pth", alpha=0.3, tau=3.0
    )
    assert (soft.alpha, soft.tau) == (0.3, 3.0)
    # hard/soft without a source is accepted here: the trainer may get a teacher module instead.
    assert make(tmp_path, distillation_type="hard").teacher is None
    # stored without teacher_logits too: a StoredLogitsDataset brings its store (the trainer checks)
    assert make(tmp_path, distillation_type="stored").teacher_logits is None


def test_command_line_parsing_has_help_and_choices(tmp_path):
    parser = HfArgumentParser(DistillationTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--distillation_type",
            "soft",
            "--teacher",
            "timm:resnet18",
            "--alpha",
            "0.2",
            "--freeze_batchnorm",
            "--report_to",
            "none",
        ]
    )
    assert (args.distillation_type, args.teacher, args.alpha, args.freeze_batchnorm) == (
        "soft",
        "timm:resnet18",
        0.2,
        True,
    )
    actions = {a.dest: a for a in parser._actions}
    for name in (
        "distillation_type",
        "alpha",
        "tau",
        "teacher",
        "teacher_logits",
        "layer_lr_decay",
        "freeze_batchnorm",
    ):
        assert actions[name].help, name
    assert set(actions["distillation_type"].choices) == {"none", "hard", "soft", "stored"}
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--distillation_type", "feature"])
