"""foveal: foveated video-language models. Each frame is one token; the LLM decides where to look next."""

__version__ = "0.1.0"
