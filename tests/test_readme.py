"""The README's Python examples run as written (in order, sharing one namespace)."""

import pathlib
import re

import pytest

pytestmark = pytest.mark.cost(16)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    gif = namespace["gif"]
    assert gif.frames.shape == (10, 16, 2) and gif.frame_steps[0] == 0 and gif.frame_steps[-1] == 20
    assert abs(float(namespace["exact"].numpy().mean()) + 1.0) < 0.3
