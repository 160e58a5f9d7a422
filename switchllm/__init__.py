"""switchllm: send each LLM request to the cheapest model that will answer it well."""

from switchllm.errors import SwitchLLMError

__version__ = "0.1.0"

__all__ = ["SwitchLLMError", "__version__"]
