"""Write the README's "From the microscope" example: SEM TIFFs as an FEI/Thermo instrument saves them.

    python benchmarks/sem_example.py sem-example/ [--per-class 6]

Two classes of specimen — "fine" particles (sigma 2 nm) and "coarse" ones (sigma 4 nm) on a grey,
noisy substrate — each imaged at two magnifications (1 and 2 nm per pixel, 512 × 512 pixels),
with the instrument's 60-row data bar (black, white text and a scale bar) below the image and
FEI metadata (``[Scan] PixelWidth``, ``[Image] ResolutionY``) in TIFF tag 34682. In pixels, a
coarse specimen at 2 nm/px is a fine one at 1 nm/px (particles of sigma 2 px, the same spacing):
only the physical scale tells them apart. Writes ``<folder>/<class>_<n>.tif``, ``manifest.csv`` (all,
with path, label, group), ``train.csv`` (the 1 nm/px micrographs) and ``test.csv`` (the
2 nm/px ones); no ``pixel_size_nm`` column: fastvlad reads the pixel size from each file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE, BAR = 512, 60
CLASSES = {"fine": 2.0, "coarse": 4.0}  # blob sigma in nm: a coarse one at 2 nm/px is a fine one at 1 nm/px


def specimen(sigma_nm: float, nm_per_px: float, rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE) uint8: Gaussian particles of ``sigma_nm`` on a noisy substrate, at ``nm_per_px``."""
    field = SIZE * nm_per_px
    n = int(field * field / (12 * sigma_nm) ** 2)  # the same coverage for both sizes
    img = np.full((SIZE, SIZE), 0.3)
    s = sigma_nm / nm_per_px
    r = int(4 * s) + 1
    ker = np.exp(-(np.arange(-r, r + 1)[:, None] ** 2 + np.arange(-r, r + 1)[None, :] ** 2) / (2 * s * s))
    padded = np.pad(img, r)
    for y, x in rng.uniform(0, SIZE, size=(n, 2)).astype(int):
        padded[y:y + 2 * r + 1, x:x + 2 * r + 1] += rng.uniform(0.4, 0.7) * ker
    img = padded[r:-r, r:-r] + rng.normal(0, 0.04, (SIZE, SIZE))
    return (np.clip(img, 0.02, 0.98) * 255).astype(np.uint8)


def data_bar(width: int, nm_per_px: float) -> np.ndarray:
    """The instrument's bar: black, white "text" and a 200 nm scale bar."""
    bar = np.zeros((BAR, width), np.uint8)
    for k in range(6):
        bar[15:27, 20 + 60 * k: 60 + 60 * k] = 255
    bar[40:44, width - 40 - int(200 / nm_per_px): width - 40] = 255
    return bar


def write_fei(path: Path, image: np.ndarray, nm_per_px: float) -> None:
    import tifffile

    ini = (f"[User]\r\nUser=example\r\n[Scan]\r\nPixelWidth={nm_per_px * 1e-9:.6e}\r\n"
           f"PixelHeight={nm_per_px * 1e-9:.6e}\r\n[Image]\r\nResolutionX={SIZE}\r\nResolutionY={SIZE}\r\n")
    tifffile.imwrite(path, np.concatenate([image, data_bar(image.shape[1], nm_per_px)]),
                     extratags=[(34682, "s", 0, ini, True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[str]] = {"manifest": [], "train": [], "test": []}
    for cls, sigma in CLASSES.items():
        for n in range(args.per_class):
            nm = (1.0, 2.0)[n % 2]
            name = f"{cls}_{n}.tif"
            write_fei(args.folder / name, specimen(sigma, nm, rng), nm)
            row = f"{name},{cls},{cls}_{n // 2}"  # a sample imaged at both magnifications
            rows["manifest"].append(row)
            rows["train" if nm == 1.0 else "test"].append(row)
    for name, lines in rows.items():
        (args.folder / f"{name}.csv").write_text("\n".join(["path,label,group", *lines]) + "\n")
    print(f"wrote {len(rows['manifest'])} SEM TIFFs, manifest.csv, train.csv (1 nm/px) and test.csv (2 nm/px) "
          f"to {args.folder}")


if __name__ == "__main__":
    main()
