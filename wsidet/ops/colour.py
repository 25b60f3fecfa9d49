"""Stain colour vectors, without torch (shared by the network layers, augmentation and QC)."""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston (2001) stain optical densities, rows H, E, DAB (as in scikit-image).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
