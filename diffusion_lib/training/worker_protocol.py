"""What a training worker process (`python -m diffusion_lib.training`) and the orchestrator that
starts it agree on, written once: the variable naming the orchestrator (the worker dies with it)
and the exit statuses that mean the same failure every time, so not worth a retry."""

PARENT_ENV = "DIFFUSION_LIB_PARENT_PID"
BAD_INPUT = 2
DIVERGED = 3
EXIT_MEANINGS = {
    BAD_INPUT: "bad input (config, data, run directory or checkpoint)",
    DIVERGED: "training diverged (NaN/Inf)",
}
