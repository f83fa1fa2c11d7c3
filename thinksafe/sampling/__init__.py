from thinksafe.sampling.base import (
    GREEDY,
    PROBE_SAMPLING,
    Completion,
    Sampler,
    SamplingConfig,
)
from thinksafe.sampling.engine import EngineProcess, EngineSettings, kept_engines
from thinksafe.sampling.hf_sampler import TransformersSampler
from thinksafe.sampling.vllm_sampler import VLLMSampler

__all__ = [
    "GREEDY",
    "PROBE_SAMPLING",
    "Completion",
    "EngineProcess",
    "EngineSettings",
    "Sampler",
    "SamplingConfig",
    "TransformersSampler",
    "VLLMSampler",
    "kept_engines",
]
