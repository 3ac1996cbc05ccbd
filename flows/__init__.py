"""Prefect flows over `diffusion_lib`. Importing the package loads TensorFlow once with its
start-up notices filtered from the console (flows/console.py), and turns off the telemetry of
any temporary Prefect server a flow starts (nothing here may use the network; set
PREFECT_SERVER_ANALYTICS_ENABLED=true to keep it)."""

import os

from flows.console import quiet_startup

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
quiet_startup()
