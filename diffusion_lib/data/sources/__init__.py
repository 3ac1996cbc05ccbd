"""Dataset sources, by name. Importing this package registers every built-in source."""

from diffusion_lib.data.sources import idx, image_folder, mnist_embedded, npz, tfds, toy2d  # noqa: F401
from diffusion_lib.data.sources.base import (
    SOURCES,
    Examples,
    Source,
    open_source,
    register_source,
)

__all__ = ["SOURCES", "Examples", "Source", "open_source", "register_source"]
