"""Test setup: 8 fake CPU devices (for the sharding tests) and tiny Hugging Face models."""

import os

# Must happen before jax is imported anywhere.
# The suite is compile-bound: without LLVM's optimisation passes XLA compiles about twice as fast (a
# tiny train step: 22 s -> 11 s on a 2-core CPU); the programs (HLO) are the same, only slower to run.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity-grade float32 matmuls everywhere (GPUs default to TF32, ~1e-3 off; see docs/tests.md).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests import hf_models  # noqa: E402

SHARED = os.environ.get("SRFORMER_SHARED") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: heavier tests, run by the benchmarks job, not by default")


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
  """Tiny random HF checkpoints saved with save_pretrained: name -> hf_models.Reference."""
  root = tmp_path_factory.mktemp("hf")
  names = hf_models.VARIANTS + hf_models.GENERATE_VARIANTS
  return {name: hf_models.save(name, root / name) for name in dict.fromkeys(names)}


@pytest.fixture(scope="session")
def shared_dir():
  path = os.path.abspath(SHARED)
  if not os.path.isdir(path):
    pytest.skip(f"the project's shared reference data is not at {path} (set SRFORMER_SHARED to "
                f"its location); only slow tests use it")
  return path
