"""Guards: judge (original prompt, full response) pairs as safe, unsafe, or error (fail closed)."""

from thinksafe.guards.base import Guard, GuardVerdict
from thinksafe.guards.llama_guard import LlamaGuard3
from thinksafe.guards.offline import OfflineJudge, is_refusal
from thinksafe.guards.wildguard import WildGuard

__all__ = ["Guard", "GuardVerdict", "LlamaGuard3", "OfflineJudge", "WildGuard", "is_refusal"]
