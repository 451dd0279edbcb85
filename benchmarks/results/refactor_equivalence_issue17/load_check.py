"""Issue #17 acceptance: TumorSynthesisPipeline.from_pretrained on a tiny bundle trained by this release (format 3)
and by the last release (0.1.0, format 2) both load and sample."""
import json
import sys

import torch

from synthesis.pipeline import TumorSynthesisPipeline

for bundle_dir in sys.argv[1:]:
    pipe = TumorSynthesisPipeline.from_pretrained(bundle_dir)
    config = json.load(open(f"{bundle_dir}/diff4mm_bundle.json", encoding="utf-8"))
    n, phases = config["roi_size_vox"], config["phases"]
    normal_roi = torch.full((1, len(phases), n, n, n), -0.2)
    mask = torch.zeros(1, 1, n, n, n)
    mask[..., n // 2 - 2:n // 2 + 2, n // 2 - 2:n // 2 + 2, n // 2 - 2:n // 2 + 2] = 1.0
    condition = mask
    if pipe.unet.config.get("enhancement_channels", 0):
        pattern = torch.tensor([-5.0, 40.0, -10.0, -20.0][:len(phases)]) / 50.0
        condition = torch.cat([mask, mask * pattern.view(1, -1, 1, 1, 1)], dim=1)
    out = pipe(normal_roi, condition, generator=torch.Generator("cpu").manual_seed(0),
               num_inference_steps=config["ddim_steps"], output_type="image")
    images = out.images
    print(f"{bundle_dir}: format {config.get('format_version')}, model_index.json "
          f"{'yes' if (__import__('pathlib').Path(bundle_dir) / 'model_index.json').is_file() else 'no'}; "
          f"sampled {tuple(images.shape)}, finite {bool(torch.isfinite(images).all())}, "
          f"change in mask {float((images - normal_roi)[:, :, mask[0, 0] > 0].abs().mean()):.4f}")
