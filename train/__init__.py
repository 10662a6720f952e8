"""Training tools for serd (``serd-train``): corpora, splits, augmentation, model, int8 export.

Nothing in :mod:`serd` imports this package; it needs the ``train`` extra
(TensorFlow, scikit-learn, matplotlib, tqdm).  Features are computed only through
:func:`serd.windows.windows_of`, so the model learns exactly what the daemon computes.
"""
