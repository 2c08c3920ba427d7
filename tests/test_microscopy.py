"""Instrument formats and pixel sizes (issue 18, item 1), on files the tests write themselves
(``tests/microscopy_files.py``): DM3/DM4, TIA SER and Velox EMD through RosettaSciIO (skipped
cleanly without it), SEM TIFFs (FEI, Zeiss), OME-TIFF and ImageJ TIFF through tifffile, and a
CSV's ``pixel_size_nm`` column."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from fastvlad import checks, config, datasets, images, microscopy, tiling
from fastvlad.errors import ImageReadError, InvalidDatasetError

from . import microscopy_files as mf

HAS_RSCIIO = importlib.util.find_spec("rsciio") is not None
HAS_H5PY = importlib.util.find_spec("h5py") is not None
needs_rsciio = pytest.mark.skipif(not HAS_RSCIIO, reason="RosettaSciIO is not installed (pip install 'fastvlad[microscopy]')")
needs_h5py = pytest.mark.skipif(not HAS_H5PY, reason="h5py is not installed")

IMAGE = (np.add.outer(np.arange(48) * 7, np.arange(64) * 3) % 4000).astype(np.uint16)  # 48 × 64, not symmetric


def _write(kind: str, folder: Path, image: np.ndarray = IMAGE, nm: float = 2.5) -> Path:
    writers = {"dm3": lambda p: mf.write_dm(p, image, nm, version=3), "dm4": lambda p: mf.write_dm(p, image, nm),
               "ser": lambda p: mf.write_ser(p, image, nm), "emd": lambda p: mf.write_velox_emd(p, image, nm),
               "fei": lambda p: mf.write_fei_tiff(p, image, nm), "zeiss": lambda p: mf.write_zeiss_tiff(p, image, nm),
               "ome": lambda p: mf.write_ome_tiff(p, image, nm), "imagej": lambda p: mf.write_imagej_tiff(p, image, nm)}
    suffix = {"fei": ".tif", "zeiss": ".tif", "ome": ".ome.tif", "imagej": ".tif"}.get(kind, f".{kind}")
    return writers[kind](folder / f"{kind}{suffix}")


INSTRUMENT = [pytest.param(k, marks=needs_rsciio) for k in ("dm3", "dm4", "ser")] + \
    [pytest.param("emd", marks=[needs_rsciio, needs_h5py])]
TIFFS = ["fei", "zeiss", "ome", "imagej"]


@pytest.mark.parametrize("kind", INSTRUMENT + TIFFS)
def test_pixels_and_pixel_size(kind: str, tmp_path: Path) -> None:
    path = _write(kind, tmp_path)
    images.probe(path)  # the header check the fail-fast pass runs
    np.testing.assert_array_equal(images.read(path), IMAGE)  # values, orientation (TIA is stored bottom-up)
    assert microscopy.pixel_size_nm(path) == pytest.approx(2.5, rel=1e-6)
    pixels, nm = tiling.read_micrograph(tiling.Micrograph(path))
    np.testing.assert_array_equal(pixels, IMAGE)
    assert nm == pytest.approx(2.5, rel=1e-6)


@needs_rsciio
def test_dm_units_and_uncalibrated(tmp_path: Path) -> None:
    assert microscopy.pixel_size_nm(mf.write_dm(tmp_path / "um.dm4", IMAGE, 0.0025, unit="µm")) == pytest.approx(2.5)
    assert microscopy.pixel_size_nm(mf.write_dm(tmp_path / "a.dm4", IMAGE, 4.0, unit="Å")) == pytest.approx(0.4)
    assert microscopy.pixel_size_nm(mf.write_dm(tmp_path / "px.dm4", IMAGE, None)) is None  # scale 1, no unit
    assert microscopy.pixel_size_nm(mf.write_dm(tmp_path / "k.dm4", IMAGE, 0.1, unit="1/nm")) is None  # diffraction


def test_plain_images_have_no_pixel_size(tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    Image.fromarray((IMAGE // 16).astype(np.uint8)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", IMAGE, resolution=(300, 300))  # dots per inch is not a pixel size
    assert microscopy.pixel_size_nm(tmp_path / "a.png") is None
    assert microscopy.pixel_size_nm(tmp_path / "b.tif") is None


@pytest.mark.parametrize("suffix", [".dm4", ".dm3", ".ser", ".emd"])
def test_without_the_extra_says_what_to_install(suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "rsciio" or name.startswith("rsciio."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rsciio", None)  # import rsciio → ImportError
    path = tmp_path / f"a{suffix}"
    path.write_bytes({".dm4": b"\0\0\0\4", ".dm3": b"\0\0\0\3", ".ser": b"II\x97\x01",
                      ".emd": b"\x89HDF\r\n\x1a\n"}[suffix] + bytes(64))
    for check in (images.probe, images.read, lambda p: checks.readable([p])):
        with pytest.raises(ImageReadError, match=r"needs RosettaSciIO.*pip install 'fastvlad\[microscopy\]'") as e:
            check(path)
        assert str(path) in str(e.value)


def test_sem_tiff_pixel_size_needs_no_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rsciio", None)
    monkeypatch.setitem(sys.modules, "rsciio.tiff", None)
    for kind in TIFFS:
        assert microscopy.pixel_size_nm(_write(kind, tmp_path)) == pytest.approx(2.5, rel=1e-6), kind


@needs_rsciio
def test_mislabelled_and_damaged_instrument_files(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "photo.dm4"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(png, format="PNG")
    with pytest.raises(ImageReadError, match="not a Gatan DigitalMicrograph DM4 file"):
        images.probe(png)
    cut = tmp_path / "cut.dm4"
    cut.write_bytes(mf.write_dm(tmp_path / "whole.dm4", IMAGE, 1.0).read_bytes()[:200])
    with pytest.raises(ImageReadError, match=f"{cut}: RosettaSciIO cannot read it"):
        images.read(cut)


def test_csv_pixel_size_column(tmp_path: Path) -> None:
    a, b = _write("fei", tmp_path), tmp_path / "b.tif"
    mf.write_zeiss_tiff(b, IMAGE, 4.0)
    (tmp_path / "m.csv").write_text("path,label,pixel_size_nm\nfei.tif,x,1.5\nb.tif,y,\n")
    ds = datasets.load(tmp_path / "m.csv")
    np.testing.assert_array_equal(ds.pixel_size_nm, [1.5, np.nan])
    sources = tiling.sources_of(ds.paths, ds.pixel_size_nm)
    assert isinstance(sources[0], tiling.Micrograph) and sources[1] == str(b)
    assert tiling.read_micrograph(sources[0])[1] == 1.5  # the CSV wins over the file's 2.5
    assert tiling.read_micrograph(tiling.Micrograph(b))[1] == pytest.approx(4.0)  # empty: the file's own
    assert a.is_file()
    for bad in ("-1", "abc", "0", "nan"):
        (tmp_path / "bad.csv").write_text(f"path,label,pixel_size_nm\nfei.tif,x,{bad}\nb.tif,y,2\n")
        with pytest.raises(InvalidDatasetError, match=r"bad.csv, line 2: pixel_size_nm"):
            datasets.load(tmp_path / "bad.csv")


@needs_rsciio
def test_folders_of_instrument_files(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        mf.write_dm(tmp_path / cls / "x.dm4", IMAGE, 1.0)
        mf.write_ser(tmp_path / cls / "y.ser", IMAGE.astype(np.float32), 1.0)
    ds = datasets.load(tmp_path)
    assert sorted(p.name for p in ds.paths) == ["x.dm4", "x.dm4", "y.ser", "y.ser"]
    prep = images.Preprocess((32, 32))
    assert prep(ds.paths[0]).shape == (3, 32, 32)


def _spy_reads(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[bool]:
    """The ``lazy`` flag of every RosettaSciIO read of ``path``'s format from now on (False: pixels decoded)."""
    plugin = microscopy._rsciio(path)
    real, reads = plugin.file_reader, []

    def spy(filename: str, lazy: bool = False, **kwargs: object) -> object:
        reads.append(lazy)
        return real(filename, lazy=lazy, **kwargs)

    monkeypatch.setattr(plugin, "file_reader", spy)
    return reads


@pytest.mark.parametrize("kind", INSTRUMENT)
def test_instrument_files_meet_the_bomb_guard_before_decoding(kind: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(kind, tmp_path)
    reads = _spy_reads(monkeypatch, path)
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", IMAGE.size - 1)
    with pytest.raises(ImageReadError, match=r"48×64 pixels exceeds the limit of 3071 \(decompression-bomb guard\)") as e:
        images.read(path)
    assert str(path) in str(e.value)
    assert False not in reads  # refused from the headers: no pixel decoded
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", IMAGE.size)  # at the limit: read as before
    np.testing.assert_array_equal(images.read(path), IMAGE)


@needs_rsciio
@needs_h5py
def test_compressed_emd_stack_is_refused_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mf.write_velox_emd_bomb(tmp_path / "bomb.emd", (128, 128, 3))
    assert path.stat().st_size < 20_000  # a few KB declaring 49,152 pixels: a decompression bomb in miniature
    reads = _spy_reads(monkeypatch, path)
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 128 * 128 * 2)  # one frame fits, the three do not
    with pytest.raises(ImageReadError, match=r"128×128×3 pixels exceeds the limit of 32768 \(decompression-bomb guard\)") as e:
        images.read(path)
    assert str(path) in str(e.value)
    assert False not in reads  # refused before RosettaSciIO decoded a chunk
    monkeypatch.setattr(config, "MAX_IMAGE_PIXELS", 128 * 128 * 3)
    np.testing.assert_array_equal(images.read(path), np.zeros((128, 128), np.uint16))  # a stack gives its first frame


def test_damaged_tiff_keeps_tifffile_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import tifffile

    path = mf.write_damaged_tiff(tmp_path / "damaged.tif")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="fastvlad")  # another test may have raised it (the CLI's -q)
    for check in (images.probe, images.read):
        with pytest.raises(ImageReadError, match="damaged.tif"):  # fastvlad's one line about it
            check(path)
    microscopy.pixel_size_nm(path)
    microscopy.data_bar_rows(path, 96)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tifffile")] == []
    assert any(r.name == "fastvlad" and "tifffile: <TiffTag.fromfile> raised" in r.getMessage()
               for r in caplog.records)  # kept for -v
    tifffile.TiffFile(path).close()  # the user's own tifffile calls still log: only fastvlad's reads are quiet
    assert any(r.name == "tifffile" and "invalid value offset" in r.getMessage() for r in caplog.records)
