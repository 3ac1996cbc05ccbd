"""The one exception type of the data layer: a ValueError that names the file or argument."""


class DataError(ValueError):
    """Bad input data, a bad argument, or a dataset directory that fails validation."""


class NewerSchemaError(DataError):
    """A manifest or shard written by a newer diffusion_lib: never overwritten, never misread."""
