"""napari-fastvlad: a napari plugin (``pip install 'fastvlad[napari]'``), declared through the
``napari.manifest`` entry point (``napari.yaml``).

- A reader for DM3/DM4, TIA SER and EMD micrographs: an image layer scaled in nanometres when the
  file gives its pixel size (TIFFs open with napari's own reader; the widget reads their pixel
  size from the file).
- A widget, "Classify micrograph (fastvlad)": pick an image layer and a saved model; it adds the
  per-tile class map (a labels layer, one label per class) and the codeword of every sampled
  pixel (a points layer coloured by codeword, unless "show codewords" is unticked), both aligned
  to the image.

``layers`` (no napari import) computes what the layers show, so it is usable and testable without
a display.
"""

from .layers import MicrographLayers, classify, layer_data

__all__ = ["MicrographLayers", "classify", "layer_data"]
