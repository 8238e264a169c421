"""Import the machine-learning libraries echo-os uses, all at once, on the calling thread.

transformers (5.x) resolves `from transformers import X` through a lazy module that is not thread-safe:
while one thread is inside the import of sentence_transformers (which imports transformers submodules),
another thread's `from transformers import CLIPImageProcessor` fails with ImportError (issue 11; a
two-thread script fails every time). Where models run on more than one thread (the API server: its render
worker and the threads FastAPI runs sync routes on), each of those threads calls `import_ml_libraries()`
before its first model: the first caller imports everything under a lock, the others wait for it, and
every later import of these names is a lookup in sys.modules. Single-threaded commands (the CLI) import
lazily as they go and never call this: `echo-os --help` stays fast.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_DONE = False


def import_ml_libraries() -> None:
    """torch, diffusers' SDXL pipelines, the transformers classes echo-os and diffusers' SDXL loaders
    reach through the lazy module, and sentence-transformers. Seconds the first time, then nothing."""
    global _DONE
    with _LOCK:
        if _DONE:
            return
        import torch  # noqa: F401 - imported for its load time only (this warms the process)
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline  # noqa: F401 - the same
        from sentence_transformers import SentenceTransformer  # noqa: F401 - the same
        from transformers import (  # noqa: F401 - the same
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            AutoTokenizer,
            CLIPImageProcessor,
            CLIPModel,
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPTokenizer,
            CLIPVisionModelWithProjection,
        )

        _DONE = True
