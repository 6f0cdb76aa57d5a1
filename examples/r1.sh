#!/bin/bash
# r1mega on SLURM: one process per GPU, started by srun on every GPU of the allocation.
#
#   sbatch examples/r1.sh examples/configs/r1_671b.yaml [key=value ...]
#
# Works from any directory: a relative config path is taken from the submit directory. Before any
# rank starts, the config is validated and the memory planner run for this allocation
# (`r1mega plan`); a layout that cannot work or fit stops the job with one line saying what to change.
# On the preemption signal (--signal below, or `scancel --signal=USR1 --batch JOBID`) the ranks save a
# checkpoint and exit, and the job requeues itself; the requeued job resumes from that checkpoint
# (checkpoint.resume=auto).
#
# Site variables (set them in the environment of sbatch, or edit the defaults here):
#   R1MEGA_VERB      r1mega verb to run: train (RL, default), sft, pretrain
#   R1MEGA_ACTIVATE  command that makes `r1mega` available on the nodes, e.g.
#                    "source /shared/venvs/r1mega/bin/activate" or "module load r1mega" (default: none)
#   R1MEGA_CONTAINER container image for srun's --container-image (pyxis/enroot sites; default: none)
#   R1MEGA_PLAN_GPU  GPU kind for the planner when the config has no plan.gpu (default h100-80gb)
#   partition / account / QoS: pass them to sbatch (-p, -A, -q) or add #SBATCH lines below.
#
#SBATCH --job-name=r1mega
#SBATCH --nodes=32
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=r1mega-%j.out

set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: sbatch examples/r1.sh CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
cd "${SLURM_SUBMIT_DIR:-$PWD}"
CONFIG=$1
shift
OVERRIDES=("$@")
VERB=${R1MEGA_VERB:-train}
if [ -n "${R1MEGA_ACTIVATE:-}" ]; then
  eval "$R1MEGA_ACTIVATE"
fi

if command -v r1mega >/dev/null; then R1MEGA=(r1mega); else R1MEGA=(python3 -m r1mega.cli); fi

NODES=${SLURM_JOB_NUM_NODES:-1}
TASKS=${SLURM_NTASKS:-1}
TASKS_PER_NODE=$((TASKS / NODES))
echo "r1mega: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: ${VERB} ${CONFIG} ${OVERRIDES[*]} on ${NODES} node(s) x ${TASKS_PER_NODE} task(s)"

# Fail fast, before any rank starts: config, layout against this allocation, memory plan.
PLAN_STAGE=rl
[ "$VERB" = train ] || PLAN_STAGE=sft
PLAN_GPU=()
if ! grep -qE '^\s*gpu:\s*[a-z]' "$CONFIG" 2>/dev/null; then PLAN_GPU=(--gpu "${R1MEGA_PLAN_GPU:-h100-80gb}"); fi
if ! "${R1MEGA[@]}" plan "$CONFIG" "${OVERRIDES[@]}" --nodes "$NODES" --gpus-per-node "$TASKS_PER_NODE" \
     --stage "$PLAN_STAGE" --no-proposal "${PLAN_GPU[@]}" > "r1mega-${SLURM_JOB_ID:-0}.plan.txt" 2>&1; then
  cat "r1mega-${SLURM_JOB_ID:-0}.plan.txt" >&2
  echo "r1mega: refused before starting any rank (see the plan above; r1mega plan suggests a layout)" >&2
  exit 1
fi

# Rendezvous from the allocation: the first node of the job's node list, a port from the job id.
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
MASTER_PORT=$((20000 + ${SLURM_JOB_ID:-0} % 10000))
export MASTER_ADDR MASTER_PORT

# What a colocated job (training + SGLang on the same GPUs) needs from NCCL/CUDA.
export CUDA_DEVICE_MAX_CONNECTIONS=1          # megatron: TP/SP communication ordered with compute
export NCCL_CUMEM_ENABLE=0                    # CUDA-IPC weight sync between trainer and engine
export TORCH_NCCL_AVOID_RECORD_STREAMS=1      # free communication buffers promptly
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # less fragmentation across offload/reload
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # NVLS buffers cost GPU memory the engine needs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

SRUN=(srun --kill-on-bad-exit=1 --ntasks="$TASKS" --ntasks-per-node="$TASKS_PER_NODE")
if [ -n "${R1MEGA_CONTAINER:-}" ]; then
  SRUN+=(--container-image="$R1MEGA_CONTAINER" --container-mounts="$PWD:$PWD" --container-workdir="$PWD")
fi

PREEMPTED=0
on_preempt() {
  # the batch shell got the preemption signal: ask every rank to checkpoint and stop
  PREEMPTED=1
  echo "r1mega: preemption signal: checkpointing"
  scancel --signal=TERM "${SLURM_JOB_ID}.${STEP_ID}" 2>/dev/null || kill -TERM "$SRUN_PID" 2>/dev/null || true
}
trap on_preempt USR1 TERM

STEP_ID=0
"${SRUN[@]}" "${R1MEGA[@]}" "$VERB" "$CONFIG" "${OVERRIDES[@]}" checkpoint.resume=auto &
SRUN_PID=$!
status=0
while true; do
  set +e
  wait "$SRUN_PID"
  status=$?
  set -e
  # `wait` returns early when a trapped signal arrives; keep waiting while srun runs
  if kill -0 "$SRUN_PID" 2>/dev/null; then continue; fi
  break
done

if [ "$PREEMPTED" = 1 ]; then
  echo "r1mega: checkpoint written (ranks exited with $status); requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}"
  exit 0
fi
echo "r1mega: finished with status $status"
exit "$status"
