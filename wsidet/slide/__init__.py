"""Whole-slide images in: opening, lazy reading, resampling, tissue, stain and pixel size.

:mod:`~wsidet.slide.wsi` opens a slide; :mod:`~wsidet.slide.reader` and :mod:`~wsidet.slide.tiff`
read windows lazily; :mod:`~wsidet.slide.pyramid` writes one.
"""
