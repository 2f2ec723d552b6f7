"""The image classes of BUSI (and of any dataset indexed for busi-unet), defined once.

Every image is ``benign``, ``malignant`` or ``normal``; benign and malignant images hold a
lesion, normal ones have an empty mask.
"""

CLASSES = ("benign", "malignant", "normal")
LESION_CLASSES = ("benign", "malignant")
