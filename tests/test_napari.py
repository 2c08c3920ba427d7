"""The napari plugin (issue 18, item 4): its layers computed without a viewer, then the plugin as
napari finds it (the napari.manifest entry point), its reader and widget in a headless viewer
(``make_napari_viewer``; an Xvfb display is started when there is none), and a screenshot of the
layers. Skipped cleanly without napari, Qt or a display. ``FASTVLAD_SCREENSHOTS=DIR`` keeps the
screenshot in DIR (the README's picture comes from this test)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from . import microscopy_files as mf
from .test_napari_layers import mosaic
from .tiny_model import fitted_copy

pytestmark = pytest.mark.napari
napari = pytest.importorskip("napari", reason="napari is not installed (pip install 'fastvlad[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
pytest.importorskip("rsciio", reason="RosettaSciIO is not installed (the reader's DM4 file)")

from fastvlad.napari_plugin._reader import get_reader  # noqa: E402
from fastvlad.napari_plugin._widget import classify_micrograph  # noqa: E402


@pytest.fixture(scope="session")
def display() -> Iterator[None]:
    """A display for Qt: the one there is, else a private Xvfb (Debian's xvfb package), else skip.
    Session-scoped, and requested before ``make_napari_viewer``: pytest-qt's QApplication (a session
    fixture) must find the display when it is created."""
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        _qt_starts()
        yield
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None or not sys.platform.startswith("linux"):
        pytest.skip("no display and no Xvfb (apt-get install xvfb)")
    number = 90 + os.getpid() % 500

    def die_with_pytest() -> None:
        # Xvfb ends when this process does, not before: Qt aborts the process if its display goes
        # away while the QApplication (pytest-qt's, kept to the end of the session) is alive.
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_pytest)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.1)
    os.environ["DISPLAY"] = f":{number}"
    _qt_starts()
    yield


def _qt_starts() -> None:
    """Skip unless a QApplication starts on this display: Qt aborts the whole process when it
    cannot (missing xcb libraries, say), so it is tried in a child process first."""
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"Qt cannot start on this display: {proc.stderr.strip().splitlines()[-1:]} (on Debian: apt-get "
                    "install xvfb libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 "
                    "libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-cursor0 libgl1 libegl1)")


def test_plugin_in_a_headless_viewer(display: None, make_napari_viewer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "fastvlad" in pm._manifests, "the napari.manifest entry point is not installed (pip install -e .)"
    assert pm.get_manifest("fastvlad").display_name == "napari-fastvlad"

    image, _ = mosaic()
    dm4 = mf.write_dm(tmp_path / "mosaic.dm4", image, 1.5)
    reader = get_reader(str(dm4))
    assert reader is not None and get_reader(str(tmp_path / "x.png")) is None
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black on Mesa's llvmpipe
    for data, kwargs, kind in reader(str(dm4)):
        viewer._add_layer_from_data(data, kwargs, kind)
    layer = viewer.layers["mosaic.dm4"]
    assert tuple(layer.scale) == (1.5, 1.5) and layer.metadata["pixel_size_nm"] == 1.5

    model = tmp_path / "tiles.fvl"
    fitted_copy(tile=(64, 64)).save(model)
    for data, kwargs, kind in classify_micrograph(layer, model, show_codewords=True):
        viewer._add_layer_from_data(data, kwargs, kind)
    classes, points = viewer.layers[-2], viewer.layers[-1]
    assert classes._type_string == "labels" and points._type_string == "points"
    assert tuple(classes.scale) == (1.5, 1.5) and classes.data.shape == image.shape
    assert set(np.unique(classes.data)) <= set(range(1, 5)) and len(points.data) == 9 * 50
    assert "answer" in classes.metadata
    assert [kind for *_, kind in classify_micrograph(layer, model, show_codewords=False)] == ["labels"]

    viewer.reset_view()
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    shot = viewer.screenshot(path=str(tmp_path / "napari-layers.png"), canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4 and shot[..., :3].std() > 5  # something was drawn
    keep = os.environ.get("FASTVLAD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "napari-layers.png", Path(keep) / "napari-layers.png")
