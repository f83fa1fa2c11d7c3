"""Online reinforcement learning baselines: GRPO, the method ThinkSafe is compared against (its cost too)."""

from thinksafe.rl.grpo import GRPOModule, GRPOPrompts

__all__ = ["GRPOModule", "GRPOPrompts"]
