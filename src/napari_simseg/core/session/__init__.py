"""An interactive session: one memory per slice, rounds, propagation, the interaction log and
the start of teaching.

Layer 4: what a click goes through. ``interactive`` is :class:`InteractiveSession` (numpy in,
numpy out); ``propagation`` carries a finished slice into its neighbours;
``interaction_log`` writes, reads and replays the ``.simseg.json`` log; ``teaching`` picks a
session's labelled slices and starts the teaching process (``jobs.teach_worker``) by module
name, never importing the trainer; ``recovery`` keeps each running session's labels, log and
points in the user's cache folder, a manifest switched last, for restoring it after a crash;
``autosave`` writes those snapshots on a background thread.
"""
