from dataclasses import replace

import numpy as np
import torch

from conftest import tiny_meta_and_model
from napari_simseg.core.engine.rounds import BatchMemory, RoundSettings, run_rounds
from napari_simseg.core.interaction.memory import InteractionMemory
from napari_simseg.core.interaction.virtual_user import EvaluationUser

SIM3 = RoundSettings("sim", depth=3, n_classes=3, click_radius=2)  # the tiny test network's


def test_batch_memory_matches_interaction_memory():
    rng = np.random.default_rng(0)
    n, h, w = 3, 9, 11
    for kind, depth in (("none", 1), ("cim", 1), ("sim", 2), ("sim", 3)):
        img = rng.normal(size=(2, 1, h, w)).astype(np.float32)
        bm = BatchMemory(kind, n, depth, torch.from_numpy(img))
        ims = [InteractionMemory(kind, n, (h, w), depth) for _ in range(2)]
        for r in range(4):
            clicks = (rng.random((2, n, h, w)) > 0.9).astype(np.float32)
            probs = rng.random((2, n, h, w)).astype(np.float32)
            bm.push(torch.from_numpy(clicks))
            for i in range(2):
                ims[i].push(clicks[i])
            got = bm.network_input().numpy()
            for i in range(2):
                np.testing.assert_array_equal(got[i], ims[i].network_input(img[i, 0]), err_msg=f"{kind} round {r}")
            bm.set_probabilities(torch.from_numpy(probs))
            for i in range(2):
                ims[i].set_probabilities(probs[i])


def test_evaluation_rounds_shapes_and_state():
    meta, model = tiny_meta_and_model()
    gts = np.zeros((2, 32, 32), np.int64)
    gts[:, 5:15, 5:15] = 1
    gts[:, 20:30, 18:28] = 2
    images = torch.from_numpy(gts[:, None].astype(np.float32))
    user = EvaluationUser(3)
    seen = []
    out = run_rounds(model, images, gts, 3, lambda g, p: (seen.append(p), user.next_round_batch(g, p))[1], SIM3)
    assert len(out) == 4 and out[0].shape == (2, 32, 32)
    # each round corrects what was shown after the previous one, round 1 the automatic result
    for k in range(3):
        np.testing.assert_array_equal(seen[k], out[k])


def test_evaluation_rounds_carry_the_recurrent_state():
    meta, model = tiny_meta_and_model()
    gts = np.zeros((1, 32, 32), np.int64)
    gts[:, 5:15, 5:15] = 1
    images = torch.from_numpy(gts[:, None].astype(np.float32))
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x, state=None):
            calls.append(state is not None)
            return model(x, state)

    run_rounds(Spy(), images, gts, 3, lambda g, p: [[(1, 8, 8)]], SIM3)
    assert calls == [False, False, True, True]  # auto and round 1 start fresh



def test_evaluation_rounds_honour_clicks_only_when_asked():
    from napari_simseg.core.interaction.clicks import Click

    meta, model = tiny_meta_and_model(memory="sim", depth=3)
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.normal(size=(2, 1, 32, 32)).astype(np.float32))
    gts = np.zeros((2, 32, 32), np.int64)
    # the same clicks whatever the previous output, so both runs see the same inputs
    fixed = [
        [[Click(1, 3, 4), Click(2, 10, 10)], [Click(0, 5, 5)]],
        [[Click(2, 3, 4)], [Click(1, 20, 21), Click(2, 30, 31)]],
        [[], [Click(0, 20, 21)]],
    ]
    calls = {"plain": 0, "honoured": 0}

    def clicker_for(name):
        def clicker(g, previous):
            calls[name] += 1
            return fixed[calls[name] - 1]
        return clicker

    plain = run_rounds(model, images, gts, 3, clicker_for("plain"), SIM3)
    honoured = run_rounds(model, images, gts, 3, clicker_for("honoured"), replace(SIM3, honour=True))
    np.testing.assert_array_equal(plain[0], honoured[0])  # no clicks yet
    for k in range(1, 4):
        want = plain[k].copy()
        for round_clicks in fixed[:k]:
            for i, image_clicks in enumerate(round_clicks):
                for c in image_clicks:
                    want[i, c.y, c.x] = c.label  # in order: the newest click on a pixel wins
        np.testing.assert_array_equal(honoured[k], want, err_msg=f"round {k}")
    assert honoured[2][0, 3, 4] == 2 and honoured[3][1, 20, 21] == 0


def test_network_rounds_show_the_networks_labels_then_the_rules_apply():
    """With ``network_rounds=2`` rounds 1-2 are the network's own labels (as with the
    refinement off), and round 3 keeps only changes to the clicked class next to its click,
    where the network's own round 3 changes other classes and far pixels too."""
    from napari_simseg.core.interaction.refinement import Refinement

    gts = np.zeros((1, 32, 32), np.int64)
    gts[:, 5:15, 5:15] = 1
    images = torch.zeros((1, 1, 32, 32))

    class Redraws(torch.nn.Module):  # a new 3-class map every call (1: auto, 2-4: rounds 1-3)
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, state=None):
            self.calls += 1
            labels = np.random.default_rng(self.calls).integers(0, 3, size=(4, 4)).repeat(8, 0).repeat(8, 1)
            labels[8:16, 8:16] = 1 if self.calls == 4 else 0  # round 3 grows class 1 at the click...
            labels[24:, 24:] = 2 if self.calls == 4 else 0  # ... and changes a far corner
            logits = 8.0 * torch.nn.functional.one_hot(torch.from_numpy(labels), 3).permute(2, 0, 1).float()
            return logits[None].expand(x.shape[0], -1, -1, -1), None

    def rounds(refinement):
        return run_rounds(Redraws(), images, gts, 3, lambda g, p: [[(1, 10, 10)]],
                          replace(SIM3, honour=True, refinement=refinement))

    off = rounds(Refinement.off())
    plain = dict(zoom=1.0, follow_clicks=False, min_lead=0.0)
    first_two = rounds(Refinement(network_rounds=2, **plain))
    for k in range(3):
        np.testing.assert_array_equal(first_two[k], off[k])
    changed = first_two[3] != first_two[2]
    assert changed.any() and set(np.unique(first_two[3][changed])) <= {1}
    assert not changed[:, 24:, 24:].any()  # far from the click, as before
    assert (off[3] != off[2])[:, 24:, 24:].any()  # where the network's own round changed it
    every = rounds(Refinement(network_rounds=0, **plain))
    assert not np.array_equal(every[1], off[1])  # refined from the first round
