"""SCL-VI visual inspection: the shared core (config, model, patch geometry, scoring, bundle I/O).

The pipeline stages live in sub-packages: ``sclvi.train`` (self-supervised training),
``sclvi.engines`` (encoder backends), ``sclvi.calib``, ``sclvi.edge``, ``sclvi.deploy``,
``sclvi.benchmarks``. Nothing here imports torch at import time.
"""

__version__ = "0.1.0"
