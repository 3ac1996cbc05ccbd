"""What a training worker (`python -m diffusion_lib.training`, a Ray Train worker) and whatever
starts it agree on, written once: the exit statuses that mean the same failure every time, so
not worth a retry."""

BAD_INPUT = 2
DIVERGED = 3
DISK = 4
EXIT_MEANINGS = {
    BAD_INPUT: "bad input (config, data, run directory or checkpoint)",
    DIVERGED: "training diverged (NaN/Inf)",
    DISK: "the run directory cannot be written (disk full, read-only or no permission)",
}
