#!/bin/bash
# Multi-node training on SLURM: one `accelerate launch` per node, which starts one process per GPU.
#   sbatch train_scripts/slurm_multi_node.sh train_scripts/recipes/lfd_resnet50_cub.yaml /data/CUB_200_2011
# Preemption-safe: --resume continues from the last complete checkpoint in the output folder (or starts fresh),
# so `sbatch --requeue` or a resubmission picks up where the job stopped.
#SBATCH --job-name=fgvc_zoo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail

RECIPE=${1:?usage: sbatch slurm_multi_node.sh RECIPE.yaml DATA_DIR [OUTPUT]}
DATA_DIR=${2:?usage: sbatch slurm_multi_node.sh RECIPE.yaml DATA_DIR [OUTPUT]}
OUTPUT=${3:-output/$(basename "$RECIPE" .yaml)}   # must be on a file system shared by all nodes
GPUS_PER_NODE=${SLURM_GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun bash -c "accelerate launch \
    --config_file train_scripts/accelerate/multi_node.yaml \
    --num_machines $SLURM_NNODES \
    --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_IP \
    --main_process_port 29500 \
    -m fgvc_zoo.train --recipe $RECIPE --data-dir $DATA_DIR --output $OUTPUT --resume"
