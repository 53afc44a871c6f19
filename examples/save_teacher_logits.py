"""Run a teacher once over replayable augmented views and store its sparse top-k probabilities.

    accelerate launch examples/save_teacher_logits.py --teacher PATH_OR_ID --dataset_name digits \
        --image_size 32 --num_epochs 10 --topk 3 --output_dir logits/digits-teacher

The same as `hf-tinyvit save-logits ...` (see `--help`). Rerunning the same command resumes: complete
shards are skipped. Any number of processes gives the same store, and `--start_epoch/--end_epoch`
let several machines split the epochs.
"""

import sys

from hf_tinyvit.cli import main

if __name__ == "__main__":
    main(["save-logits", *sys.argv[1:]])
