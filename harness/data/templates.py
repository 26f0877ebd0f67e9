"""Prompt-template lists that official code bases use besides a dataset's single hand-written prompt.

``IMAGENET_TEMPLATES_SELECT``: the 7 templates CLIP's prompt-engineering notebook selected for ImageNet,
as in CoOp's ``trainers/imagenet_templates.py`` (its ``ZeroshotCLIP2`` ensemble) and Tip-Adapter's
ImageNet classifier (``datasets/imagenet.py``). An ensemble classifier normalises each template's text
embedding, averages them and normalises again (:meth:`bench.context.TrialContext.text_weights`).
"""

IMAGENET_TEMPLATES_SELECT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
