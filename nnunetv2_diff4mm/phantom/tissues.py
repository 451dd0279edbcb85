"""Tissue classes of the phantom and their attenuation (HU) in each contrast phase.

Values are typical published figures for a 120 kVp abdominal protocol (unenhanced, late arterial ~35 s,
portal-venous ~70 s, delayed ~3-5 min); each case scales the contrast uptake by a random factor so that cases
differ the way patients and injection timings do. Tumor HU is defined relative to the case's healthy liver.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

PHASES: tuple[str, ...] = ("NC", "AP", "PVP", "DELAY")
REFERENCE_PHASE = "PVP"


class Tissue(IntEnum):
    """Integer ids of the anatomical label atlas; tumors use ids >= TUMOR_BASE (3 compartments each)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BOWEL = 3
    CORTICAL_BONE = 4
    MARROW = 5
    LUNG = 6
    LIVER = 7
    PORTAL_VEIN = 8
    HEPATIC_VEIN = 9
    AORTA = 10
    IVC = 11
    SPLEEN = 12
    KIDNEY_CORTEX = 13
    KIDNEY_MEDULLA = 14
    GAS = 15
    STOMACH = 16
    GALLBLADDER = 17
    CSF = 18
    DISC = 19
    HEART = 20


TUMOR_BASE = 32
TUMOR_BODY, TUMOR_NECROSIS, TUMOR_CAPSULE = 0, 1, 2  # compartment offsets: id = TUMOR_BASE + 3*i + offset
MAX_TUMORS = (256 - TUMOR_BASE) // 3

# HU per phase (NC, AP, PVP, DELAY).
BASE_HU: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.AIR: (-1000, -1000, -1000, -1000),
    Tissue.FAT: (-100, -100, -98, -98),
    Tissue.MUSCLE: (50, 58, 65, 62),
    Tissue.BOWEL: (35, 70, 85, 70),
    Tissue.CORTICAL_BONE: (750, 760, 770, 765),
    Tissue.MARROW: (230, 245, 255, 250),
    Tissue.LUNG: (-850, -850, -850, -850),
    Tissue.LIVER: (55, 75, 110, 90),
    Tissue.PORTAL_VEIN: (40, 135, 185, 125),
    Tissue.HEPATIC_VEIN: (40, 55, 165, 120),
    Tissue.AORTA: (40, 300, 170, 120),
    Tissue.IVC: (40, 85, 150, 115),
    Tissue.SPLEEN: (48, 120, 120, 95),
    Tissue.KIDNEY_CORTEX: (32, 190, 170, 140),
    Tissue.KIDNEY_MEDULLA: (32, 80, 175, 150),
    Tissue.GAS: (-900, -900, -900, -900),
    Tissue.STOMACH: (20, 22, 25, 24),
    Tissue.GALLBLADDER: (10, 10, 10, 10),
    Tissue.CSF: (10, 10, 10, 10),
    Tissue.DISC: (80, 85, 90, 90),
    Tissue.HEART: (40, 260, 165, 120),
}

# Std of the (anatomy-fixed) texture field per tissue, HU: parenchyma is not flat on real CT.
TEXTURE_HU: dict[Tissue, float] = {
    Tissue.FAT: 10, Tissue.MUSCLE: 8, Tissue.BOWEL: 15, Tissue.MARROW: 40, Tissue.LIVER: 6,
    Tissue.SPLEEN: 7, Tissue.KIDNEY_CORTEX: 10, Tissue.KIDNEY_MEDULLA: 10, Tissue.STOMACH: 8, Tissue.LUNG: 30,
}
TUMOR_TEXTURE_HU = 12.0

# Tumor types: HU offset from the case's healthy liver per phase (mean, std across tumors).
# hypervascular (HCC-like): slightly hypodense unenhanced, arterial hyperenhancement, washout in PVP/DELAY.
# hypovascular (metastasis-like): hypodense in every phase, most conspicuous in PVP.
TUMOR_TYPES: dict[str, dict[str, tuple[float, float]]] = {
    "hypervascular": {"NC": (-14, 4), "AP": (50, 12), "PVP": (-22, 6), "DELAY": (-24, 6)},
    "hypovascular": {"NC": (-18, 4), "AP": (-28, 6), "PVP": (-48, 8), "DELAY": (-30, 6)},
}
# Phases in which a tumor of each type may be (almost) isodense, i.e. near-invisible.
ISODENSE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "hypervascular": ("NC", "PVP"),
    "hypovascular": ("NC", "AP"),
}
NECROSIS_HU = 22.0  # non-enhancing necrotic core, all phases
CAPSULE_OFFSET_HU = {"NC": -8, "AP": -5, "PVP": 12, "DELAY": 20}  # enhancing pseudo-capsule of HCC

# CT noise std per phase (HU), before spatial correlation.
NOISE_HU = {"NC": 14.0, "AP": 12.0, "PVP": 12.0, "DELAY": 13.0}


def phase_lookup_tables(uptake: dict[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per phase: (mean HU, texture std) indexed by tissue id, for the non-tumor tissues.

    `uptake[phase]` scales each tissue's enhancement over its unenhanced value (contrast timing/dose per case).
    """
    tables = {}
    for p_idx, phase in enumerate(PHASES):
        mean = np.zeros(256, np.float32)
        tex = np.zeros(256, np.float32)
        for tissue, values in BASE_HU.items():
            nc = values[0]
            mean[tissue] = nc + uptake[phase] * (values[p_idx] - nc)
            tex[tissue] = TEXTURE_HU.get(tissue, 4.0)
        tables[phase] = (mean, tex)
    return tables
