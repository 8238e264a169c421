"""echo-os: a local-first visual storytelling engine built on Stable Diffusion XL."""

__version__ = "0.1.0"
