"""python -m diffusion_lib.kernels: builds the compiled kernels ahead and prints where they are."""

from diffusion_lib.kernels import build

print(build())
