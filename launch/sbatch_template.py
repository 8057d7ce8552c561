"""The sbatch script every Slurm run is rendered from; `{{name}}` slots are filled by `slurm_script.render_job`.

It lives in a Python string so it ships with any install of the package. Every value in a slot is already quoted
(bash or `#SBATCH` quoting, see quoting.py); the script itself only reads Slurm's variables.

How preemption works: Slurm sends USR1 `signal_lead` seconds before the time limit (`--signal`), or SIGTERM when the
job is requeued or preempted from outside. Training saves a checkpoint at the next step boundary and exits with
REQUEUE_EXIT_CODE; the script then requeues the job, which restarts with SLURM_RESTART_COUNT=n and resumes from
RUN_DIR/checkpoints/latest. An external `scontrol requeue` requeues the job itself.
"""
import re
from typing import Dict

TEMPLATE = """\
#!/bin/bash
# Nucleotron training job, rendered by `nucleotron launch slurm`. Submit with: sbatch THIS_FILE
# Preemption-safe: {{signal_note}}.
# Training then saves a checkpoint and exits {{requeue_exit_code}}; this script requeues the job, and the restarted
# job resumes from RUN_DIR/checkpoints/latest (an external `scontrol requeue` sends SIGTERM: same save, same resume).
{{directives}}

set -uo pipefail

# -- What runs (values were quoted when this script was rendered). Submitting resolved this command's config into
# RUN_DIR/slurm/config.yaml, which the job trains from, so a requeued job runs exactly what was submitted:
#   {{origin}}
RUN_DIR={{run_dir}}
TRAIN=({{train_command}})
PROCS_PER_NODE={{procs_per_node}}
REQUEUE_EXIT_CODE={{requeue_exit_code}}

log() { echo "[nucleotron launch] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }
log "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}; run dir ${RUN_DIR}"

# -- Rendezvous: rank 0 runs on the first node of the allocation --
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE GROUP_RANK  # set per task below (from srun) or by torchrun

# -- Environment of every rank (defaults yield to what the submitting shell exported) --
{{environment}}

# -- Launch --
PREEMPTED=0
{{launch}}
STEP_PID=$!

# -- Wait (a trapped signal interrupts `wait`; keep waiting while the step runs) and requeue if asked --
wait "$STEP_PID"; STATUS=$?
while [ "$STATUS" -gt 128 ] && kill -0 "$STEP_PID" 2>/dev/null; do wait "$STEP_PID"; STATUS=$?; done
if [ "$STATUS" -eq "$REQUEUE_EXIT_CODE" ] || { [ "$PREEMPTED" = 1 ] && [ "$STATUS" -ne 0 ]; }; then
  log "training saved a checkpoint and stopped (exit $STATUS); requeueing job ${SLURM_JOB_ID}"
  if scontrol requeue "$SLURM_JOB_ID"; then
    exit 0
  fi
  log "scontrol requeue failed: resubmit this script to resume from ${RUN_DIR}/checkpoints/latest"
fi
log "training exited with status $STATUS"
exit "$STATUS"
"""

SRUN_LAUNCH = """\
# One Slurm task per training process; Slurm's USR1/TERM reach every rank directly. Each task maps its Slurm ids
# to torch.distributed's env:// variables, then execs training (so signals go straight to it).
srun --ntasks-per-node="$PROCS_PER_NODE" --kill-on-bad-exit=0{{srun_flags}} bash -c \\
  'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; exec "$@"' rank "${TRAIN[@]}" &"""

TORCHRUN_LAUNCH = """\
# One torchrun per node. torchrun does not forward USR1, so the batch shell takes it (--signal=B:USR1) and sends
# SIGTERM to the job step; torchrun passes that on and gives workers ~30 s to save before it kills them.
on_usr1() {
  PREEMPTED=1
  log "USR1: time limit near; SIGTERM to the training step so it saves a checkpoint"
  scancel --signal=TERM "$SLURM_JOB_ID"
}
trap on_usr1 USR1
srun --ntasks-per-node=1 --kill-on-bad-exit=0{{srun_flags}} torchrun --nnodes="$SLURM_NNODES" \\
  --nproc-per-node="$PROCS_PER_NODE" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \\
  --rdzv-id="$SLURM_JOB_ID" --no-python "${TRAIN[@]}" &"""

_SLOT = re.compile(r"\{\{([a-z_]+)\}\}")


def fill(template: str, values: Dict[str, str]) -> str:
    """Replace every `{{name}}`; a slot without a value (or a value without a slot) is a bug, so it raises."""
    unused = set(values) - set(_SLOT.findall(template))
    if unused:
        raise KeyError(f"values without a slot in the template: {sorted(unused)}")

    def one(match):
        if match.group(1) not in values:
            raise KeyError(f"template slot {match.group(0)} has no value")
        return values[match.group(1)]

    return _SLOT.sub(one, template)
