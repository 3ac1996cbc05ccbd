"""Prefect flows over `diffusion_lib`. Importing the package loads TensorFlow once with its
start-up notices filtered from the console (flows/console.py), and turns off the telemetry of
any temporary Prefect server a flow starts (nothing here may use the network; set
PREFECT_SERVER_ANALYTICS_ENABLED=true to keep it). The temporary server gets 120 s to start
instead of Prefect's 20: on 2 cores busy with other jobs it took longer, and the job failed
before any work ("Timed out while attempting to connect to ephemeral Prefect API server").
Settings in the environment win over both."""

import os

from flows.console import quiet_startup

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
quiet_startup()
