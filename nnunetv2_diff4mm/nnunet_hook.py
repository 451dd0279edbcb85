"""Lets nnU-Net find Diff4MMTrainer with no set-up step.

nnU-Net v2 looks for trainers outside its own package only in the folders listed in the environment variable
`nnUNet_extTrainer` (read lazily, at lookup time). This module, imported at interpreter start by the
`nnunetv2_diff4mm.pth` file that the package installs into site-packages, appends the folder holding our
trainer classes to that variable, keeping whatever the user already set. It imports nothing heavy.
Set `DIFF4MM_NO_NNUNET_HOOK=1` to switch it off.
"""
import os

TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_trainers")


def register() -> None:
    if os.environ.get("DIFF4MM_NO_NNUNET_HOOK"):
        return
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if TRAINER_FOLDER not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [TRAINER_FOLDER])


register()
