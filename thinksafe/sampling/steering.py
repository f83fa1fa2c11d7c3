"""Refusal steering: what is sent to the model for a harmful prompt (the training row keeps the original)."""

from __future__ import annotations

from thinksafe.errors import UserError

#: The paper's steering instruction (ThinkSafe, §3); ``{prompt}`` is replaced by the harmful prompt.
PAPER_TEMPLATE = "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:\n\n{prompt}"


def check_template(template: str) -> str:
    if "{prompt}" not in template:
        raise UserError(
            "data.steering_template must contain the placeholder {prompt} where the harmful prompt goes; "
            f"got {template!r}."
        )
    return template


def steer(prompt: str, harmful: bool, template: str = PAPER_TEMPLATE) -> str:
    """The user turn actually sent: harmful prompts behind the steering template, benign ones unchanged."""
    return template.replace("{prompt}", prompt) if harmful else prompt
