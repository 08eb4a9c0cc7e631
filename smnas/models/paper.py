"""The final models of the SM-NAS paper (Yao et al., AAAI 2020, table of E0..E5) as specs.

Canonical spec strings (:mod:`smnas.models.spec`): the searched backbone encoding, the FPN
levels and channels, RPN (``garpn`` = guided anchoring), head (``cascade3`` = Cascade R-CNN with
3 stages; FC width 1024, the default, so it is not written), input size, and BN: final models
switch GN+WS back to BN for speed. Each name is a reproducible target of the workflow.
"""
from __future__ import annotations

PAPER_MODELS: dict[str, str] = {
    "E0": "basicblock_64_1-21-21-12+fpn:P2-P5:c128+rpn+2fc+512x512+bn",
    "E1": "basicblock_56_111-2111-2-111112+fpn:P2-P5:c256+rpn+2fc+800x600+bn",
    "E2": "basicblock_48_12-11111-211-1112+fpn:P1-P5:c128+rpn+cascade3+800x600+bn",
    "E3": "bottleneck_56_211-111111111-2111111-11112111+fpn:P1-P5:c128+rpn+cascade3+800x600+bn",
    "E4": "Xbottleneck_56_21-21-111111111111111-2111111+fpn:P1-P5:c256+garpn+cascade3+800x600+bn",
    "E5": "Xbottleneck_56_21-21-11111111111111-21111111+fpn:P1-P5:c256+garpn+cascade3+1333x800+bn",
}
