"""The work behind each ``simseg`` command: the top of the core, may import every layer below.

``training`` is ``simseg train`` (the trainer's loop; ``training_setup`` sets a run up:
device, data, network, optimiser; ``training_records`` validates, checkpoints, keeps the
training state for resuming and writes the logs; ``recipe`` is its default recipe, sized
to a time budget on this machine); ``evaluation`` is ``simseg evaluate`` (Dice / IoU against
clicks, NoC) and ``volume_protocol`` its volume protocol (a corrective round on the worst
slice, then a propagation); ``calibration`` fits per-class decision offsets;
``averaging`` makes a model soup; ``benchmark`` measures rounds, inference and training;
``datacheck`` is ``simseg check-data``; ``teach_worker`` is the teaching process's program.
"""
