"""Process exit statuses shared by `nucleotron train` and the launchers (which must not import train internals)."""

# EX_TEMPFAIL from sysexits.h: "try again later". `nucleotron train` exits with it after saving a checkpoint on
# SIGTERM/SIGUSR1; a launcher that sees it requeues the job, which then resumes from RUN_DIR/checkpoints/latest.
REQUEUE_EXIT_CODE = 75
