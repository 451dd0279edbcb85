#!/usr/bin/env bash
# GPU path check and GPU timings, on a CUDA machine with the package installed (console scripts on PATH).
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]        # default /tmp/diff4mm_gpu_check; log in WORK_DIR/gpu_check.log
#
# 1. the demo's CPU stages (phantom, registration, plans, inpainter, normal CTs);
# 2. synthesizer training (default preset) on cuda, then synthesis speed on cuda vs cpu;
# 3. both short trainers (nnUNetTrainer_Diff4MMDemo, Diff4MMTrainer_Demo) on cuda with nnU-Net's own command,
#    their epoch-time ratio (benchmarks/trainer_overhead.py), and nnUNetv2_predict with -tr Diff4MMTrainer_Demo;
# 4. the gpu synthesizer preset for one epoch per stage (it builds, trains and saves).
set -euo pipefail
W=$(realpath -m "${1:-/tmp/diff4mm_gpu_check}")
mkdir -p "$W"
exec > >(tee -a "$W/gpu_check.log") 2>&1
export nnUNet_raw=$W/demo/nnUNet_raw nnUNet_preprocessed=$W/demo/nnUNet_preprocessed nnUNet_results=$W/demo/nnUNet_results
NP=$(( $(nproc) < 8 ? $(nproc) : 8 ))
step() { echo; echo "=== $1 ($(date +%T))"; }
secs() { local t=$SECONDS; "$@"; echo "--- ${SECONDS}-${t} = $((SECONDS - t)) s: $*"; }
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"

step "CPU stages of the demo"
secs diff4mm_demo -o "$W/demo" --stop-after "normal CTs" -np "$NP"
RAW=$nnUNet_raw/Dataset501_Diff4MMPhantom
BUNDLE=$RAW/diff4mm/synthesizer

step "synthesizer training, default preset, cuda"
secs diff4mm_train_synthesizer -d 501 -o "$BUNDLE" --preset default --device cuda
step "synthesis speed, cuda vs cpu"
secs diff4mm_synthesize "$BUNDLE" -d 501 -n 32 -o "$W/synthetic_cuda" --device cuda
secs diff4mm_synthesize "$BUNDLE" -d 501 -n 8 -o "$W/synthetic_cpu" --device cpu

step "trainers on cuda (nnUNetv2_train), epoch-time ratio"
secs python "$(dirname "$0")/trainer_overhead.py" -d 501 --train --device cuda
step "nnUNetv2_predict with -tr Diff4MMTrainer_Demo"
secs nnUNetv2_predict -i "$RAW/imagesTs" -o "$W/predictions" -d 501 -c 3d_fullres -f 0 -tr Diff4MMTrainer_Demo \
    -p Diff4MMCPUPlans -device cuda --disable_progress_bar
ls "$W/predictions"/*.nii.gz

step "gpu synthesizer preset, one epoch per stage"
secs diff4mm_train_synthesizer -d 501 -o "$W/bundle_gpu" --preset gpu --device cuda --epochs 1
echo "GPU check finished"
