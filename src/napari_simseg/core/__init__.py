"""Non-GUI core of napari-simseg: numpy in, numpy out. Never imports napari, Qt or magicgui.

Layers, bottom to top. A module imports only from its own layer (without a circle) or
from the layers below it, never from above, counting imports inside functions
(``tests/test_architecture.py`` checks this)::

    foundation   resources devices clicks decision memory file_checks io preprocessing metrics
                 phantom virtual_user regions atomic colour pil_pictures
    network      model checkpoint predictor
    interaction  interaction_log propagation session teaching
    data         layouts datasets splits augmentation slices
    engine       rounds losses baselines train_config data_generation
    jobs         volume_protocol evaluation calibration training averaging benchmark recipe datacheck
                 teach_worker
    app          (outside core) cli demo _layers _viewer_jobs viewer_session _qt_helpers _widget _reader
                 _writer _sample_data _colors _llvm_guard _teach _teach_panel _image_picker

One job per module: ``devices`` resolves devices and autocast; ``clicks`` encodes,
shifts and honours clicks; ``decision`` turns probabilities into labels (with
per-class offsets, numpy and torch); ``memory`` is one slice's none/CIM/SIM memory;
``io`` reads and writes images with their geometry (``colour``: colour pictures as
channels; ``pil_pictures``: GIF and palette PNGs); ``atomic`` makes every
write atomic (a temporary file, then a rename); ``preprocessing`` normalises,
slices, stacks neighbours and pads (no torch); ``predictor`` is the one way a
checkpoint becomes a running network (flip averaging inside); ``interaction_log``
writes, reads and replays the ``.simseg.json`` log; ``propagation`` carries a finished
slice into its neighbours; ``session`` is the interactive session; ``teaching`` picks a
session's labelled slices and runs ``teach_worker`` (the trainer on those slices) in a
spawned process, never importing it; ``datasets``, ``splits``, ``augmentation`` and
``slices`` turn labelled folders into training slices; ``rounds`` is the batched
interaction-round engine of training, evaluation and calibration; the jobs are the
``simseg`` commands' work (``volume_protocol`` is ``simseg evaluate --protocol volume``'s).
"""

from .clicks import Click, ClickError, encode_clicks

__all__ = ["Click", "ClickError", "encode_clicks"]
