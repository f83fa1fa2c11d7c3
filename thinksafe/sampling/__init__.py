from thinksafe.sampling.base import Completion, Sampler, SamplingConfig
from thinksafe.sampling.hf_sampler import TransformersSampler
from thinksafe.sampling.vllm_sampler import VLLMSampler

__all__ = ["Completion", "Sampler", "SamplingConfig", "TransformersSampler", "VLLMSampler"]
