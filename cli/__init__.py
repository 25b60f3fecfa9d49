"""The ``wsidet`` command line (installed as ``wsidet.cli``)."""
