"""Anatomical atlas of one phantom patient: a tissue-id volume and a texture field in physical space.

Organs are implicit shapes (super-ellipses, ellipsoids, tubes) with random size, position and smooth boundary
perturbations; the liver is two lobes blended and carved by lungs, gallbladder, kidney and IVC, with
portal and hepatic vein trees grown inside it; tumors are lobulated ellipsoids inside the liver.
Hand-written because no imaging library ships an abdominal CT phantom generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from synthesis.tumor_masks import lobulated_blob

from .grid import Grid, smooth_noise
from .tissues import (ISODENSE_CANDIDATES, MAX_TUMORS, PHASES, TUMOR_BASE, TUMOR_BODY, TUMOR_CAPSULE,
                      TUMOR_NECROSIS, TUMOR_TYPES, Tissue)

TUMOR_COUNT_PROBABILITIES = (0.15, 0.30, 0.25, 0.15, 0.10, 0.05)  # 0..5 tumors per case
TUMOR_DIAMETER_RANGE_MM = (6.0, 70.0)  # log-uniform


@dataclass
class BodyShape:
    """Super-elliptic axial body outline (mm); the abdominal wall is a fat then a muscle layer."""

    half_width: float
    half_depth: float
    exponent: float
    fat_mm: float
    muscle_mm: float

    def inside(self, X, Y, shrink: float = 0.0) -> np.ndarray:
        a, b = self.half_width - shrink, self.half_depth - shrink
        return (np.abs(X / a) ** self.exponent + np.abs(Y / b) ** self.exponent) < 1.0

    def interior(self, X, Y) -> np.ndarray:
        """The abdominal cavity (inside the muscle layer)."""
        return self.inside(X, Y, self.fat_mm + self.muscle_mm)


@dataclass
class TumorSpec:
    index: int
    kind: str  # a key of tissues.TUMOR_TYPES
    center_mm: tuple[float, float, float]
    diameter_mm: float
    hu_offset: dict[str, float]  # per phase, relative to the healthy liver
    isodense_phase: str | None
    necrosis: bool
    capsule: bool
    volume_ml: float = 0.0


@dataclass
class Anatomy:
    grid: Grid
    tissue: np.ndarray  # uint8 (z, y, x), Tissue ids and tumor ids
    texture: np.ndarray  # float32 unit-std field, fixed to the anatomy (moves with it)
    liver: np.ndarray  # bool: liver label (parenchyma, intrahepatic vessels, tumors)
    body: BodyShape
    liver_center_mm: np.ndarray
    tumors: list[TumorSpec] = field(default_factory=list)

    @property
    def tumor_mask(self) -> np.ndarray:
        return self.tissue >= TUMOR_BASE


def _ellipsoid_q(Z, Y, X, center, radii, rotation=None) -> np.ndarray:
    """Squared normalised radius of an (optionally rotated) ellipsoid; < 1 inside."""
    dx, dy, dz = X - center[0], Y - center[1], Z - center[2]
    if rotation is None:
        return (dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2
    q = 0.0
    for k in range(3):  # local axis k = column k of the rotation matrix
        u = rotation[0, k] * dx + rotation[1, k] * dy + rotation[2, k] * dz
        q = q + (u / radii[k]) ** 2
    return q


def _smooth_min(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _paint(tissue, mask, value, box=None):
    if box is None:
        tissue[mask] = value
    else:
        tissue[box][mask] = value


def _jitter(rng, value, amount):
    return np.asarray(value, float) + rng.uniform(-amount, amount, size=np.shape(value))


def _segment_distance(Z, Y, X, p0, p1):
    d = p1 - p0
    length2 = float(d @ d) or 1e-6
    t = ((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / length2
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2)


def _random_turn(rng, direction, angle_deg):
    """Rotate a unit vector by angle_deg about a random axis perpendicular to it."""
    axis = np.cross(direction, rng.standard_normal(3))
    axis /= np.linalg.norm(axis) + 1e-9
    return Rotation.from_rotvec(np.deg2rad(angle_deg) * axis).apply(direction)


def _grow_vessel_tree(rng, inside, root, direction, length, radius, depth, children=2):
    """Random branching tree of (p0, p1, radius) segments kept inside the organ (inside(point) -> bool)."""
    segments = []
    stack = [(np.asarray(root, float), np.asarray(direction, float) / np.linalg.norm(direction), length, radius,
              depth)]
    while stack:
        p0, d, length, radius, depth = stack.pop()
        p1 = None
        for scale in (1.0, 0.6, 0.35):
            candidate = p0 + d * length * scale
            if inside(candidate):
                p1 = candidate
                break
        if p1 is None:
            continue
        segments.append((p0, p1, radius))
        if depth > 0 and radius > 1.2:
            for sign in (-1, 1)[:children]:
                turn = sign * rng.uniform(25, 45)
                stack.append((p1, _random_turn(rng, d, turn), length * rng.uniform(0.6, 0.8),
                              radius * rng.uniform(0.65, 0.8), depth - 1))
    return segments


def _paint_segments(grid, tissue, segments, value, where=None):
    for p0, p1, r in segments:
        lo = np.minimum(p0, p1) - r - grid.spacing[0]
        hi = np.maximum(p0, p1) + r + grid.spacing[0]
        box = grid.box(lo, hi)
        Z, Y, X = grid.axes(box)
        mask = _segment_distance(Z, Y, X, p0, p1) < r
        if where is not None:
            mask &= where[box]
        _paint(tissue, mask, value, box)


def build_anatomy(rng: np.random.Generator, grid: Grid, max_tumors: int = 5) -> Anatomy:
    """Draw one patient on `grid` (anatomical frame: body centre at x=y=0, z superior, LPS mm)."""
    if not 0 <= max_tumors <= MAX_TUMORS:
        raise ValueError(f"max_tumors must be in [0, {MAX_TUMORS}]")
    Z, Y, X = grid.axes()
    tissue = np.zeros(grid.shape, np.uint8)

    body = BodyShape(rng.uniform(138, 160), rng.uniform(100, 115), rng.uniform(2.2, 2.6), rng.uniform(12, 25),
                     rng.uniform(8, 12))
    in_body = np.broadcast_to(body.inside(X, Y), grid.shape)
    interior = np.broadcast_to(body.interior(X, Y), grid.shape)
    tissue[in_body] = Tissue.FAT  # subcutaneous and visceral fat; organs are painted over it
    tissue[np.broadcast_to(body.inside(X, Y, body.fat_mm), grid.shape) & ~interior] = Tissue.MUSCLE

    # Bowel loops and gas pockets in the lower / anterior cavity.
    bowel_noise = smooth_noise(rng, grid, 6.0)
    lower = interior & (Z < rng.uniform(-5, 15)) & (Y < 50)
    tissue[lower & (bowel_noise > 0.3)] = Tissue.BOWEL
    tissue[lower & (bowel_noise > 1.7)] = Tissue.GAS

    # Thorax: lung bases and heart at the cranial end, carved out of the cavity.
    lungs = np.zeros(grid.shape, bool)
    for side in (-1, 1):
        c = _jitter(rng, (side * 75, 25, 138), 6)
        lungs |= _ellipsoid_q(Z, Y, X, c, _jitter(rng, (72, 92, 108), 5)) < 1
    lungs &= interior
    tissue[lungs] = Tissue.LUNG
    heart = interior & (_ellipsoid_q(Z, Y, X, _jitter(rng, (15, -30, 145), 5), (60, 55, 65)) < 1)
    tissue[heart] = Tissue.HEART

    # Spine, paraspinal muscles, psoas, ribs.
    spine_y = body.half_depth - body.fat_mm - 42
    r_vert = rng.uniform(15, 19)
    rho_v = np.sqrt(X ** 2 + (Y - spine_y) ** 2)
    vert = np.broadcast_to(rho_v < r_vert, grid.shape)
    disc = vert & np.broadcast_to(((Z - rng.uniform(0, 30)) % 30) < 6, grid.shape)
    tissue[vert] = Tissue.CORTICAL_BONE
    tissue[np.broadcast_to(rho_v < r_vert - 2.5, grid.shape)] = Tissue.MARROW
    tissue[disc] = Tissue.DISC
    canal_y = spine_y + r_vert + 9
    rho_c = np.sqrt(X ** 2 + (Y - canal_y) ** 2)
    for side in (-1, 1):
        para = np.broadcast_to(((X - side * 38) / 28) ** 2 + ((Y - canal_y - 10) / 18) ** 2 < 1, grid.shape)
        tissue[para & in_body] = Tissue.MUSCLE
        psoas_r = np.clip(10 + (-Z) * 0.12, 6, 22)
        psoas = ((X - side * (r_vert + 14)) ** 2 + (Y - spine_y + 4) ** 2) < psoas_r ** 2
        tissue[psoas & (Z < 20)] = Tissue.MUSCLE
    tissue[np.broadcast_to(rho_c < 14, grid.shape)] = Tissue.CORTICAL_BONE
    tissue[np.broadcast_to((np.abs(X) < 4) & (Y > canal_y) & (Y < canal_y + 28), grid.shape) & in_body] = \
        Tissue.CORTICAL_BONE
    tissue[np.broadcast_to(rho_c < 8, grid.shape)] = Tissue.CSF
    # Ribs descend from the spine towards the front: in one axial slice they cut short arcs of the wall.
    rib_band = np.broadcast_to(body.inside(X, Y, body.fat_mm + 2) & ~body.inside(X, Y, body.fat_mm + 9),
                               grid.shape)
    from_back = np.arctan2(np.abs(X), Y) / np.pi  # 0 at the spine, 1 at the front midline
    rib_phase = rng.uniform(0, 26)
    ribs = rib_band & (((Z + 70 * from_back + rib_phase) % 26) < 9) & (from_back < 0.8) & (Z > -40)
    tissue[ribs] = Tissue.CORTICAL_BONE

    # Great vessels.
    aorta_c = _jitter(rng, (16, spine_y - r_vert - 12), 3)
    ivc_c = _jitter(rng, (-24, spine_y - r_vert - 10), 3)
    tissue[np.broadcast_to((X - aorta_c[0]) ** 2 + (Y - aorta_c[1]) ** 2 < rng.uniform(10, 13) ** 2,
                           grid.shape) & interior & ~heart] = Tissue.AORTA
    ivc = np.broadcast_to((X - ivc_c[0]) ** 2 + (Y - ivc_c[1]) ** 2 < rng.uniform(10, 14) ** 2, grid.shape)
    ivc = ivc & interior & (Z < 90)
    tissue[ivc] = Tissue.IVC

    # Kidneys (cortex, medulla, sinus fat), spleen, stomach (wall, fluid, anterior gas).
    carve = lungs | heart | ivc
    for side, z0 in ((1, -45), (-1, -60)):
        c = _jitter(rng, (side * 62, spine_y - 2, z0), 5)
        rot = Rotation.from_euler("z", side * rng.uniform(10, 25), degrees=True).as_matrix()
        radii = _jitter(rng, (27, 30, 55), 3)
        q = _ellipsoid_q(Z, Y, X, c, radii, rot)
        kidney = (q < 1) & interior
        tissue[kidney] = Tissue.KIDNEY_CORTEX
        tissue[kidney & (q < 0.45)] = Tissue.KIDNEY_MEDULLA
        sinus_c = c + np.array([-side * 14, -4, 0])
        tissue[kidney & (_ellipsoid_q(Z, Y, X, sinus_c, radii * 0.35, rot) < 1)] = Tissue.FAT
        carve |= kidney
    rot = Rotation.from_euler("z", rng.uniform(20, 40), degrees=True).as_matrix()
    spleen_q = _ellipsoid_q(Z, Y, X, _jitter(rng, (82, 50, 35), 6), _jitter(rng, (28, 55, 48), 5), rot)
    spleen = (spleen_q < 1 + 0.08 * smooth_noise(rng, grid, 15.0)) & interior & ~lungs
    tissue[spleen] = Tissue.SPLEEN
    stomach_c = _jitter(rng, (55, -25, 30), 6)
    stomach_r = _jitter(rng, (45, 38, 45), 5)
    stomach_q = _ellipsoid_q(Z, Y, X, stomach_c, stomach_r)
    stomach = (stomach_q < 1) & interior & ~spleen & ~lungs & ~heart
    tissue[stomach] = Tissue.MUSCLE  # enhancing wall
    lumen = stomach & (_ellipsoid_q(Z, Y, X, stomach_c, stomach_r - 4) < 1)
    tissue[lumen] = Tissue.STOMACH
    tissue[lumen & (Y < stomach_c[1] - rng.uniform(5, 20))] = Tissue.GAS  # air rises anteriorly (supine)
    carve |= spleen | stomach

    # Liver: right and left lobes blended, perturbed, carved by neighbours; gallbladder in its inferior face.
    right_c = _jitter(rng, (-62, 0, 0), 6)
    left_c = _jitter(rng, (0, -45, 22), 6)
    f_right = np.sqrt(_ellipsoid_q(Z, Y, X, right_c, _jitter(rng, (66, 76, 82), 6))) - 1
    f_left = np.sqrt(_ellipsoid_q(Z, Y, X, left_c, _jitter(rng, (62, 38, 40), 5))) - 1
    f_liver = _smooth_min(f_right, f_left, 0.3) + 0.07 * smooth_noise(rng, grid, 20.0)
    gb_c = right_c + _jitter(rng, (28, -52, -35), 5)
    gb_rot = Rotation.from_euler("x", rng.uniform(-30, -10), degrees=True).as_matrix()
    gallbladder = (_ellipsoid_q(Z, Y, X, gb_c, _jitter(rng, (15, 15, 32), 3), gb_rot) < 1) & interior
    # the liver yields to bone and muscle (spine, psoas, crura) and to the organs drawn before it
    hard = np.isin(tissue, (Tissue.MUSCLE, Tissue.CORTICAL_BONE, Tissue.MARROW, Tissue.DISC, Tissue.CSF))
    hard |= np.broadcast_to(rho_v < r_vert + 4, grid.shape)
    liver = (f_liver < 0) & interior & ~carve & ~gallbladder & ~hard
    liver &= ~(np.broadcast_to((X - aorta_c[0]) ** 2 + (Y - aorta_c[1]) ** 2 < 16 ** 2, grid.shape))
    # keep the largest connected piece: a phantom liver is one organ
    labels, n = ndimage.label(liver)
    if n > 1:
        liver = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    tissue[gallbladder & ~carve] = Tissue.GALLBLADDER
    tissue[liver] = Tissue.LIVER

    # Intrahepatic vessels: portal tree from the hilum, three hepatic veins draining to the IVC.
    def inside_liver(p):
        return bool(liver[grid.index_of(p)])

    liver_idx = np.argwhere(liver)
    centre_zyx = liver_idx.mean(axis=0)
    liver_center = np.asarray(grid.origin) + centre_zyx[::-1] * np.asarray(grid.spacing)
    hilum = liver_center + _jitter(rng, (25, 5, -15), 5)
    if not inside_liver(hilum):
        hilum = liver_center
    portal = [(hilum + np.array([40, 5, -30]), hilum, rng.uniform(6, 8))]  # extrahepatic trunk
    for d in ((-1, 0.1, 0.25), (1, -0.8, 0.4), (-0.6, -0.3, -0.6)):
        portal += _grow_vessel_tree(rng, inside_liver, hilum, _jitter(rng, d, 0.2), rng.uniform(35, 50),
                                    rng.uniform(4.5, 6.0), depth=3)
    confluence = np.array([ivc_c[0], ivc_c[1], 0.0])
    top = liver_idx[:, 0].max()
    confluence[2] = grid.origin[2] + (top - 4) * grid.spacing[2]
    hepatic = []
    for d in ((-1, 0.1, -0.6), (-0.4, -0.8, -0.6), (0.6, -0.7, -0.3)):
        start = confluence + np.asarray(d) * 12
        if inside_liver(start):
            hepatic += _grow_vessel_tree(rng, inside_liver, start, _jitter(rng, d, 0.2), rng.uniform(40, 55),
                                         rng.uniform(4.0, 5.5), depth=3)
    _paint_segments(grid, tissue, hepatic, Tissue.HEPATIC_VEIN, where=liver)
    _paint_segments(grid, tissue, portal[1:], Tissue.PORTAL_VEIN, where=liver)
    _paint_segments(grid, tissue, portal[:1], Tissue.PORTAL_VEIN, where=interior & ~carve)

    anatomy = Anatomy(grid, tissue, smooth_noise(rng, grid, 2.0).astype(np.float32), liver, body, liver_center)
    _add_tumors(rng, anatomy, max_tumors)
    return anatomy


def _add_tumors(rng: np.random.Generator, anatomy: Anatomy, max_tumors: int) -> None:
    """Place 0..max_tumors lobulated tumors of random type and size inside the liver, never across its edge."""
    grid, liver = anatomy.grid, anatomy.liver
    probs = np.asarray(TUMOR_COUNT_PROBABILITIES[: max_tumors + 1], float)
    count = int(rng.choice(len(probs), p=probs / probs.sum()))
    if count == 0:
        return
    depth = ndimage.distance_transform_edt(liver, sampling=grid.spacing[::-1])
    placed: list[tuple[np.ndarray, float]] = []
    spacing = np.asarray(grid.spacing)
    log_lo, log_hi = np.log(TUMOR_DIAMETER_RANGE_MM)
    for _ in range(count):
        diameter = float(np.exp(rng.uniform(log_lo, log_hi)))
        centre = None
        for _attempt in range(6):
            r = diameter / 2
            ok = depth >= max(0.6 * r, 2.0 * spacing.max())
            candidates = np.argwhere(ok)
            rng.shuffle(candidates)
            for idx in candidates[:200]:
                p = np.asarray(grid.origin) + idx[::-1] * spacing
                if all(np.linalg.norm(p - c) > r + rc + 4 for c, rc in placed):
                    centre = p
                    break
            if centre is not None:
                break
            diameter *= 0.7
        if centre is None:
            continue
        _paint_tumor(rng, anatomy, len(anatomy.tumors), centre, diameter)
        placed.append((centre, diameter / 2))


def _paint_tumor(rng, anatomy: Anatomy, index: int, centre: np.ndarray, diameter: float) -> None:
    grid = anatomy.grid
    kind = str(rng.choice(sorted(TUMOR_TYPES)))
    radii = diameter / 2 * rng.uniform(0.8, 1.2, size=3)
    rot = Rotation.random(random_state=rng).as_matrix()
    reach = radii.max() * 1.4 + 2 * max(grid.spacing)
    box = grid.box(centre - reach, centre + reach)
    Z, Y, X = grid.axes(box)
    lobulation = 0.12
    rho, boundary = lobulated_blob(Z, Y, X, centre, radii, rot, rng, lobulation, grid.spacing[::-1])
    lobes = (boundary - 1.0) / lobulation
    region = (rho < boundary) & anatomy.liver[box] & (anatomy.tissue[box] != Tissue.GALLBLADDER)
    if not region.any():
        return
    base = TUMOR_BASE + 3 * index
    necrosis = diameter > 24 and rng.random() < (0.7 if kind == "hypovascular" else 0.4)
    capsule = kind == "hypervascular" and diameter > 16 and rng.random() < 0.6
    sub = anatomy.tissue[box]
    sub[region] = base + TUMOR_BODY
    if capsule:
        sub[region & (rho > boundary - 2.5 / (diameter / 2))] = base + TUMOR_CAPSULE
    if necrosis:
        sub[region & (rho < 0.45 + 0.08 * lobes)] = base + TUMOR_NECROSIS
    offsets = {p: float(rng.normal(*TUMOR_TYPES[kind][p])) for p in PHASES}
    isodense = None
    if rng.random() < 0.35:
        isodense = str(rng.choice(ISODENSE_CANDIDATES[kind]))
        offsets[isodense] = float(rng.uniform(-4, 4))
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    anatomy.tumors.append(TumorSpec(index, kind, tuple(float(v) for v in centre), float(diameter), offsets,
                                    isodense, bool(necrosis), bool(capsule), float(region.sum() * voxel_ml)))
