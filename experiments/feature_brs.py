"""A feature-level test-time refinement (f-BRS, Sofiiuk et al. 2020) on the evaluation's rounds (issue 32).

Before each round's labels are decided, a per-channel scale and bias of the decoder's last
feature map (the head's input) are fitted by Adam so that the clicked pixels of the
memory (the click masks of every state it holds, or only the newest with ``--newest``)
take their click's class (cross-entropy), with an L2 penalty ``--penalty`` on the scale
and bias. The change is shared by the whole slice, so a click may move pixels that look
like the clicked ones anywhere: the published idea for fixing errors no click points at.
The refinement rules of the package (locality, confidence, following) then decide what
is shown, as without it. Not in the package: it did not help (``docs/method.md``).

    python experiments/feature_brs.py --steps 10 --penalty 10 --lr 0.01 -- \
        --checkpoint runs/base/ct2d/best.safetensors --data /tmp/ts_ct2d --split val \
        --split-file runs/base/ct2d/split.json --clicks 0,1,2,3,5,10 --noc-clicks 20 \
        --device cpu --zoom 1 --json OUT.json

Everything after ``--`` goes to ``simseg evaluate``. Assumes a SIM (or CIM/none) input of
one image channel without context slices, as the recipes' checkpoints have.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from napari_simseg.core.imaging.transforms import Canvas
from napari_simseg.core.network import model as model_module


def clicked_targets(x: torch.Tensor, n_classes: int, newest: bool):
    """The clicked pixels of a network input and their classes: ``(mask (B, H, W), class (B, H, W))``."""
    depth = (x.shape[1] - 1) // (2 * n_classes)
    if depth:
        slots = [depth - 1] if newest else range(depth)
        clicks = torch.stack([x[:, 1 + 2 * n_classes * d: 1 + 2 * n_classes * d + n_classes] for d in slots]).amax(0)
    else:
        clicks = x[:, 1:1 + n_classes]
    return clicks.amax(1) > 0.5, clicks.argmax(1)


def fitted_head(net, features: torch.Tensor, clicked: torch.Tensor, target: torch.Tensor, args) -> torch.Tensor:
    """The head's logits with a scale and bias of ``features`` fitted to the clicks."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        y = features.detach().float().clone()
        clicked, target = clicked.clone(), target.clone()
        scale = torch.zeros(y.shape[0], y.shape[1], 1, 1, requires_grad=True)
        bias = torch.zeros_like(scale, requires_grad=True)
        optimiser = torch.optim.Adam([scale, bias], lr=args.lr)
        counts = clicked.flatten(1).sum(1).clamp_min(1)
        for _ in range(args.steps):
            loss_map = F.cross_entropy(net.head(y * (1 + scale) + bias), target, reduction="none")
            loss = ((loss_map * clicked).flatten(1).sum(1) / counts).sum()
            loss = loss + args.penalty * (scale.pow(2).sum() + bias.pow(2).sum())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            return net.head(y * (1 + scale) + bias)


def patched_forward(args):
    def forward(self, x, state=None):
        canvas = Canvas(x.shape[-2:], self.config.canvas, self.stride)
        if not canvas.identity:
            if self._pads_edge:
                edge = self._edge_padded.to(x.device)
                x = torch.where(edge, canvas.transform(x, "edge"), canvas.transform(x))
            else:
                x = canvas.transform(x)
        features = self.encoder(x)
        sizes = [f.shape[-2:] for f in features][::-1]
        skips = features[1:][::-1]
        y, new_state = skips[0], []
        for i, stage in enumerate(self.stages):
            skip = skips[i + 1] if i + 1 < len(skips) else None
            y, s = stage(y, sizes[i + 1], skip, None if state is None else state[i])
            new_state.append(s)
        logits = self.head(y)
        clicked, target = clicked_targets(x, self.config.n_classes, args.newest)
        if args.steps and clicked.any():
            has = clicked.flatten(1).any(1).view(-1, 1, 1, 1)
            logits = torch.where(has, fitted_head(self, y, clicked, target, args).to(logits.dtype), logits)
        return canvas.inverse(logits), (tuple(new_state) if self.recurrent else None)

    return forward


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per round (0: the plain network)")
    parser.add_argument("--penalty", type=float, default=10.0, help="L2 weight on the scale and bias")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--newest", action="store_true", help="fit only the newest state's clicks")
    args = parser.parse_args(argv[:split])
    model_module.SimSegNet.forward = patched_forward(args)
    from napari_simseg.cli import main as simseg

    return simseg(["evaluate", *argv[split + 1:]])


if __name__ == "__main__":
    sys.exit(main())
