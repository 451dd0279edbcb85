"""Folder that nnU-Net scans for trainer classes (nnUNet_extTrainer); see nnunet_hook.py."""
