"""The napari adapter: :class:`ViewerSession` (the console API, Qt-free), the layers it reads
and writes, its jobs, teaching from a viewer, and the widget's Qt pieces.

Qt-free (the console's and the widget's):

* ``viewer_session``: :class:`ViewerSession`, which owns its collaborators below and hands
  them explicitly to the jobs it builds;
* ``session_start``: a session's start split by thread (choose the layers, load and read off
  the GUI thread, bind), its options, and the rule that one live session drives a set of layers;
* ``jobs``: the :class:`Job` (compute on any thread; finish, fail, cancel on the GUI thread)
  and the :class:`JobRunner` that lets one run at a time;
* ``slice_jobs``: automatic segmentation and propagation, the jobs that write many slices;
* ``session_files``: saving and loading the labels and the interaction log (one transaction);
* ``autosave``: the session's work kept after every action for recovery after a crash, and
  restoring it;
* ``layers``: which layers a session may use (image, channels, geometry) and the view;
* ``labels_view``: the ``"SimSeg labels"`` layer, written without erasing hand edits;
* ``click_layers``: the ``"<class> clicks"`` layers and which points each round used;
* ``teach``: teaching from a viewer and the switch to the taught checkpoint;
* ``shortcuts``: the keys bound on SimSeg's layers;
* ``colors``: the class colours.

The widget's Qt pieces (the dock widget itself is ``napari_simseg._widget``, where the
manifest names it): ``job_worker`` (jobs on napari worker threads, progress and *Cancel*),
``controls`` (the checkpoint field, the session buttons), ``dialogs`` (Yes/No questions),
``teach_panel`` (the *Teach* box) and ``image_picker`` (one image layer per channel).
"""
