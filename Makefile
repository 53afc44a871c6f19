# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The CPU machines this project is developed on serve these two wheels from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The oldest transformers release the package supports (pyproject.toml's minimum): `make test-oldest` runs the
# suite's fast tests against it in .venv-oldest, a venv that sees .venv's packages through a .pth line and
# holds only that transformers and the pins it brings (its own tokenizers, huggingface_hub, kernels).
TRANSFORMERS_OLDEST ?= $(shell sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
OLDEST := .venv-oldest
# Tests of transformers behaviour newer than the minimum rather than of this package: import hygiene
# (transformers < 5.11 imports pyarrow and scikit-learn itself) and the `activation_checkpointing_enable`
# name (transformers >= 5.23; older releases call it gradient_checkpointing_enable).
OLDEST_DESELECT ?= not loads_no_data_stack

.PHONY: install test test-oldest demo demo-full demo-imagenet bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

$(OLDEST)/.installed-$(TRANSFORMERS_OLDEST): $(STAMP)
	rm -rf $(OLDEST)
	$$($(BIN)/python -c "import sys; print(sys.base_prefix)")/bin/python3 -m venv $(OLDEST)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		$$($(OLDEST)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/main-venv.pth
	$(OLDEST)/bin/pip install --quiet --disable-pip-version-check "transformers[kernels]==$(TRANSFORMERS_OLDEST)"
	touch $@

test-oldest: $(OLDEST)/.installed-$(TRANSFORMERS_OLDEST)
	PYTHONPATH=$(CURDIR)/src $(OLDEST)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	PYTHONPATH=$(CURDIR)/src $(OLDEST)/bin/python -m pytest -n 2 --dist loadgroup -q -p no:cacheprovider tests \
		-m "not slow and not multiprocess and not fault" -k "$(OLDEST_DESELECT)"

demo: $(STAMP)
	$(BIN)/python examples/demo.py --output_dir outputs/demo

demo-full: $(STAMP)
	$(BIN)/python examples/demo.py --output_dir outputs/demo-full --seeds 3

demo-imagenet: $(STAMP)
	$(BIN)/python examples/imagenet_teacher_photos.py --output_dir outputs/imagenet-teacher

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(OLDEST) outputs
