"""Train a TinyViT, DeiT-distilled or any transformers image classifier with DistillationTrainer: TinyViT's
fast pretraining distillation from stored teacher logits, DeiT's hard/soft distillation, or fine-tuning.

    accelerate launch examples/distill.py --model_preset tinyvit-5m-224 --dataset_name digits \
        --image_size 32 --teacher_logits logits/digits-teacher --distillation_type stored \
        --output_dir out/tinyvit-5m --num_train_epochs 10

The same as `hf-tinyvit distill ...`. Every `TrainingArguments` option works (mixed precision,
checkpoints, --resume_from_checkpoint, --push_to_hub). One CPU process or many GPUs, the same
command under `accelerate launch`.
"""

import sys

from hf_tinyvit.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
