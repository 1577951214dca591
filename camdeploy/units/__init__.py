"""What the units see: each unit of the last feature map by its top images, its dataset-wide
threshold and masks, its concepts (Network Dissection, Bau et al. 2017, on the deployed graph),
and the units behind a class (the CAM paper's class-specific units).

Modules: ``upsample`` (a unit's mask), ``stats`` (streaming top images and exact thresholds),
``concepts`` (Broden and box masks), ``tally`` (IoU as NetDissect-Lite counts it), ``analysis``
(the two passes over the data), ``classes`` (class-specific units and why a prediction),
``compare`` (precision variants), ``report`` (montages, HTML, JSON, CSV).
"""
