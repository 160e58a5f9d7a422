"""switchllm: send each LLM request to the cheapest model that will answer it well."""

import os

# numpy's BLAS threads spin-wait against torch's on small hosts; switchllm's numpy work is
# small per call, so one BLAS thread is faster overall (knn, one prompt: 20 ms -> 10 ms on 2
# cores). Only a default: set OPENBLAS_NUM_THREADS yourself to override. Must precede numpy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from switchllm.errors import SwitchLLMError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["SwitchLLMError", "__version__"]
