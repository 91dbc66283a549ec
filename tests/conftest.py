"""Shared fixtures: a tiny config sized for tests, cached in a per-session folder."""

import os
import tempfile

import pytest
import torch

from foveal.config import load_config
from foveal.log import setup as setup_logging

torch.set_num_threads(2)
# a test that names no cache_dir writes to this session's folder, never to the user cache
os.environ["FOVEAL_CACHE"] = tempfile.mkdtemp(prefix="foveal-test-cache-")


def tiny_overrides(**kw) -> list[str]:
    """The tiny preset shrunk further: a handful of clips and steps."""
    base = {
        "data.train_clips": 16,
        "data.heldout_clips": 8,
        "data.num_frames": 4,
        "train.batch_size": 2,
        "train.grad_accum": 2,
        "train.steps": 4,
        "train.warmup_steps": 1,
        "train.ckpt_every": 2,
        "train.tensorboard": False,
        "train.report_clips": 0,  # no viz gallery in report.html (test_report.py draws one)
        "train.jobs": 1,  # compare's models in turn, in the test's process (test_parallel.py runs them at once)
    }
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir):
    def make(**kw):
        return load_config(
            "tiny", overrides=[*tiny_overrides(**kw), f"out_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}"]
        )

    return make


@pytest.fixture
def logs(capsys):
    """What the command line logs (progress and warnings go to stderr), read as text."""
    setup_logging()
    return lambda: capsys.readouterr().err
