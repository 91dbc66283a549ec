"""foveal: foveated video-language models. Each frame is one token; the LLM decides where to look next.

The Python API (foveal/api.py): load_config, fit, load -> Model (caption, evaluate, save_pretrained)."""

__version__ = "0.1.0"

from foveal.api import Model, fit, load, load_config  # noqa: E402  (after __version__, which cli reads)

__all__ = ["Model", "__version__", "fit", "load", "load_config"]
