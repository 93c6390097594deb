"""What a user does and what the network is shown of it: clicks, the interaction memory, the
virtual user, and what a corrective round may change.

Layer 2: imports only the layers below (``io``, ``imaging``). ``clicks`` encodes, shifts
and honours clicks; ``memory`` is one slice's none / CIM / SIM memory; ``virtual_user`` is
the simulated user of training (DDG, SDG) and evaluation; ``refinement`` decides which of
a round's changes are shown (local to its clicks, following the clicks), the same in the
session and the evaluation.
"""
