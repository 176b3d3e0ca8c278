"""`imask eval`: how well a variant masks labelled faces, how much it over-masks, what it costs.

Datasets are folders of images with a `gt.json` (WIDER FACE style or dlib's), the built-in set of pictures with no
human face (`builtin:no-faces`), the built-in labelled set of real faces from scikit-image's LFW subset
(`builtin:lfw-faces`, lfw_faces.py), or folders of video clips (leak check only). The report format is documented in
docs/EVALUATION.md and versioned by its `schema` field; gate.py holds the limits `imask eval` can fail on.
"""
