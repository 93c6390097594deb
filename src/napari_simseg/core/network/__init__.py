"""The network and everything torch: devices, the U-Net with its ConvLSTM decoder, safetensors
checkpoints, the predictor and the decision rule.

Layer 3. ``devices`` resolves devices, autocast and the memory guard; ``model`` is the
network; ``checkpoint`` reads and writes ``.safetensors`` checkpoints with a JSON header
(never unpickling); ``predictor`` is the one way a checkpoint becomes a running network
(flip averaging inside); ``decision`` turns probabilities into labels with per-class
offsets; ``zoom`` gives a round's clicks focus views finer than the working grid.
"""
