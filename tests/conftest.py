import os

# Nothing in the suite may reach the network; set before transformers/datasets are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# pytest-xdist runs one worker per core; more threads per worker only oversubscribe the machine.
torch.set_num_threads(1)
