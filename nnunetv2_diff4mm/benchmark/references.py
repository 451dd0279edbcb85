"""The reference labels of the test cases, gathered into one flat folder."""
from __future__ import annotations

from pathlib import Path

from .common import BenchmarkError, _link_or_copy


def collect_references(cases: list[str], ending: str, out_dir: Path, test_labels: Path | None = None,
                       phantom: Path | None = None) -> Path:
    """Flat folder out_dir/<case><ending> with the reference label of every test case (links or copies; a
    phantom's ground_truth/<case>/label.nii.gz is converted when the dataset's file ending differs)."""
    import SimpleITK as sitk

    from registration.image_io import write_image_atomic

    if (test_labels is None) == (phantom is None):
        raise BenchmarkError("give the test-set references with exactly one of --test-labels DIR or --phantom DIR")
    sources = {}
    for case in cases:
        src = (Path(test_labels) / f"{case}{ending}" if test_labels is not None
               else Path(phantom) / "ground_truth" / case / "label.nii.gz")
        if not src.is_file():
            raise BenchmarkError(f"{src}: missing reference label of test case {case}")
        sources[case] = src
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case, src in sources.items():
        dst = out_dir / f"{case}{ending}"
        if src.name.endswith(ending):
            _link_or_copy(src, dst)
        elif not dst.is_file() or dst.stat().st_mtime_ns < src.stat().st_mtime_ns:
            write_image_atomic(sitk.ReadImage(str(src)), dst)
    return out_dir


