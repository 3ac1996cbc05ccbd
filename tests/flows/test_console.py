"""The console of a flow started from the command line: TensorFlow's start-up notices filtered
from file descriptor 2, every other line kept, in order."""

import os
import pathlib
import subprocess
import sys

import pytest

from diffusion_lib.training.startup_noise import NVIDIA_DRIVER
from tests.lib.training.test_startup_noise import CUINIT, NOISE, REAL

pytestmark = pytest.mark.cost(30)
CONSOLE = pathlib.Path(__file__).resolve().parents[2] / "flows" / "console.py"

# Loads flows/console.py alone in a child: importing the package starts TensorFlow (5 s a child).
# It imports diffusion_lib.training.startup_noise, which loads nothing else.
_CONSOLE = (
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('console', {str(CONSOLE)!r})\n"
    "console = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(console)\n"
)


def _through_filter(lines, driver_present):
    """Writes `lines` to fd 2 from native-like code inside filtered_stderr, in a child process."""
    code = (
        _CONSOLE + "import os\n"
        "from diffusion_lib.training.startup_noise import noise_patterns\n"
        "filtered_stderr = console.filtered_stderr\n"
        f"with filtered_stderr(noise_patterns(driver_present={driver_present})):\n"
        f"    os.write(2, {''.join(line + chr(10) for line in lines)!r}.encode())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stderr.splitlines()


def test_known_notices_are_dropped_and_everything_else_kept_in_order():
    mixed = [NOISE[0], REAL[0], NOISE[1], CUINIT, REAL[1], NOISE[2]]
    assert _through_filter(mixed, driver_present=False) == REAL
    # With an NVIDIA driver, a failing cuInit is a real failure: kept.
    assert _through_filter(mixed, driver_present=True) == [REAL[0], CUINIT, REAL[1]]


def test_importing_the_flows_prints_nothing_on_a_machine_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "-c", "import flows.train_and_sample"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert "I0000" not in done.stderr and "absl::InitializeLog" not in done.stderr, done.stderr
    if not NVIDIA_DRIVER.exists():
        assert "cuInit" not in done.stderr, done.stderr


_BARS = _CONSOLE + (
    "import logging, time\n"
    "import prefect  # its console handlers\n"
    "progress_bars = console.progress_bars\n"
    "from tasks.progress import show_progress\n"
    "log = logging.getLogger('prefect.console_test')\n"
    "with progress_bars():\n"
    "    for step in range(0, 11):\n"
    "        show_progress('train', step, 10, 'training run-x')\n"
    "        if step == 5:\n"
    "            log.info('a log line in the middle')\n"
    "        time.sleep(0.05)\n"
    "    show_progress('render', 1, 1, 'rendering')\n"
    "log.info('after the bars')\n"
)


def _stderr_of_bars(terminal: bool) -> str:
    """The script above's stderr: a pseudo-terminal (a user's console) or a pipe (a log file)."""
    if not terminal:
        done = subprocess.run(
            [sys.executable, "-c", _BARS], capture_output=True, text=True, timeout=120, check=True
        )
        return done.stderr
    import pty

    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARS], stdout=subprocess.DEVNULL, stderr=child, close_fds=True
    )
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_terminal_and_only_there():
    """On a terminal: a rich bar per stage (steps done, elapsed, ETA) and Prefect's log lines
    above it, not torn through it; in a pipe: the log lines alone, no bar characters."""
    shown = _stderr_of_bars(terminal=True)
    assert "Traceback" not in shown, shown[-3000:]
    assert "training run-x" in shown and "10/10" in shown and "ETA" in shown
    assert "━" in shown and "rendering" in shown
    assert "a log line in the middle" in shown and "after the bars" in shown
    # The log line is printed whole on a line of its own (rich moves the bars below it).
    line = next(ln for ln in shown.splitlines() if "a log line in the middle" in ln)
    assert "| INFO    | prefect.console_test - a log line in the middle" in line, line
    assert "━" not in line and "training run-x" not in line

    piped = _stderr_of_bars(terminal=False)
    assert "Traceback" not in piped, piped[-3000:]
    assert "a log line in the middle" in piped and "after the bars" in piped
    assert "━" not in piped and "training run-x" not in piped
