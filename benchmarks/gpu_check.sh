#!/usr/bin/env bash
# GPU path check and GPU timings, on a CUDA machine with the package installed (console scripts on PATH).
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]        # default /tmp/diff4mm_gpu_check; log in WORK_DIR/gpu_check.log
#
# 1. the demo's CPU stages (phantom, registration, plans, inpainter, normal CTs);
# 2. synthesizer training (default preset) on cuda, then synthesis speed on cuda vs cpu;
# 3. both short trainers (nnUNetTrainer_Diff4MMDemo, Diff4MMTrainer_Demo) on cuda with nnU-Net's own command,
#    their epoch-time ratio (benchmarks/trainer_overhead.py), and nnUNetv2_predict with -tr Diff4MMTrainer_Demo;
# 4. the gpu synthesizer preset for one epoch per stage (it builds, trains and saves);
# 5. scale-out (issue #16): two folds of Diff4MMTrainer_Demo at once on one GPU (their epoch times against one
#    fold alone, and each fold's synthesis producer on the trainer's device, from its pool status.json), and,
#    on a machine with two GPUs, nnUNetv2_train -num_gpus 2 and accelerate launch --num_processes 2 of the
#    synthesizer.
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
BUNDLE=$nnUNet_results/Dataset501_Diff4MMPhantom/diff4mm/synthesizer

step "synthesizer training, default preset, cuda"
secs diff4mm_train_synthesizer -d 501 -o "$BUNDLE" --preset cpu --device cuda
step "synthesis speed, cuda vs cpu"
secs diff4mm_synthesize "$BUNDLE" -d 501 --num-cases 32 -o "$W/synthetic_cuda" --device cuda
secs diff4mm_synthesize "$BUNDLE" -d 501 --num-cases 8 -o "$W/synthetic_cpu" --device cpu

step "trainers on cuda (nnUNetv2_train), epoch-time ratio"
secs python "$(dirname "$0")/trainer_overhead.py" -d 501 --train --device cuda
step "nnUNetv2_predict with -tr Diff4MMTrainer_Demo"
secs nnUNetv2_predict -i "$RAW/imagesTs" -o "$W/predictions" -d 501 -c 3d_fullres -f 0 -tr Diff4MMTrainer_Demo \
    -p Diff4MMCPUPlans -device cuda --disable_progress_bar
ls "$W/predictions"/*.nii.gz

step "gpu synthesizer preset, one epoch per stage"
secs diff4mm_train_synthesizer -d 501 -o "$W/bundle_gpu" --preset gpu --device cuda --epochs 1
step "two folds at once on one GPU vs one fold alone (Diff4MMTrainer_Demo)"
RES=$nnUNet_results/Dataset501_Diff4MMPhantom/Diff4MMTrainer_Demo__Diff4MMCPUPlans__3d_fullres
secs nnUNetv2_train 501 3d_fullres 1 -tr Diff4MMTrainer_Demo -p Diff4MMCPUPlans -device cuda
( nnUNetv2_train 501 3d_fullres 2 -tr Diff4MMTrainer_Demo -p Diff4MMCPUPlans -device cuda > "$W/fold2.log" 2>&1 ) &
( nnUNetv2_train 501 3d_fullres 3 -tr Diff4MMTrainer_Demo -p Diff4MMCPUPlans -device cuda > "$W/fold3.log" 2>&1 ) &
secs wait
POOLS=$nnUNet_preprocessed/Dataset501_Diff4MMPhantom/diff4mm/Diff4MMCPUPlans_3d_fullres
for F in 1 2 3; do  # nnU-Net's epoch times, and where each fold's producer ran (its pool's status.json)
  python - "$RES/fold_$F" "$POOLS" "$F" <<'PY'
import json, re, sys
from pathlib import Path
fold, pools_root, f = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", log)]
pools = [json.loads(p.read_text()) for p in pools_root.glob(f"pool_Diff4MMTrainer_Demo_fold{f}_rank*/status.json")]
print(fold.name, "mean epoch s", round(sum(times[1:]) / max(len(times) - 1, 1), 2),
      "producer device", [p.get("device") for p in pools], "synthesised", [p.get("produced") for p in pools])
PY
done

if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step "nnU-Net multi-GPU: -num_gpus 2"
  secs nnUNetv2_train 501 3d_fullres 4 -tr Diff4MMTrainer_Demo -p Diff4MMCPUPlans -num_gpus 2
  step "accelerate launch --num_processes 2: synthesizer, tiny preset"
  secs accelerate launch --num_processes 2 -m nnunetv2_diff4mm.cli.train_synthesizer -d 501 -o "$W/bundle_ddp" \
      --preset tiny --epochs 1
  python -c "from synthesis.pipeline import Synthesizer; Synthesizer.from_bundle('$W/bundle_ddp'); print('bundle loads')"
else
  echo "one GPU: -num_gpus 2 and accelerate --num_processes 2 skipped"
fi
echo "GPU check finished"
