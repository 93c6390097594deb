"""Non-GUI core of napari-simseg: numpy in, numpy out. Never imports napari, Qt or magicgui.

The core is a stack of sub-packages, bottom to top. A module imports only from its own
package (without a circle) or from the packages below it, never from above, counting
imports inside functions (``tests/test_architecture.py`` checks this)::

    io           files: images with their geometry, atomic writes, colour pictures, resources
    imaging      pixel arrays, no torch: normalisation, padding, geometry transforms, regions, metrics
    interaction  clicks, the interaction memory, the virtual user
    network      devices, the model, checkpoints, the predictor, the decision rule
    session      the interactive session, propagation, the interaction log, starting teaching
    data         layouts, cases, splits, augmentation, slice datasets, synthetic data
    engine       interaction rounds, losses, training options, one training batch, baselines
    jobs         the work of each ``simseg`` command (train, evaluate, calibrate, ...)

Each package's docstring says what each of its modules does.
"""
