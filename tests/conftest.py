"""Shared fixtures: tiny random models with real chat templates, and one vLLM engine per pytest run."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED}; CI provides it beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    """A tiny random Qwen3 (hidden 128, 2 layers, head_dim 64) with the real Qwen3 chat template."""
    from thinksafe.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), template="qwen3")


@pytest.fixture(scope="session")
def tiny_r1(tmp_path_factory) -> Path:
    """The same with the real DeepSeek-R1-Distill template (generation prompt ends in <think>\\n)."""
    from thinksafe.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-r1"), template="r1")


@pytest.fixture(scope="session")
def vllm_sampler():
    """One VLLMSampler for the whole run: its engine stays up across tests (start is ~30 s on this CPU)
    and is restarted only when a test asks for another model."""
    pytest.importorskip("vllm")
    from thinksafe.sampling import VLLMSampler

    sampler = VLLMSampler(keep_engine=True, gpu_memory_utilization=0.1, max_model_len=2048)
    yield sampler
    sampler.shutdown()
