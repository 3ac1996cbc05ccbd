"""diffusion_lib: score-based and denoising diffusion models in TensorFlow 2."""

__version__ = "0.1.0"
