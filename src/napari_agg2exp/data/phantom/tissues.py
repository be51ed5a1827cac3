"""What the phantom paints: base intensities (HU) of its tissues and the ids of its labels."""

from __future__ import annotations

from napari_agg2exp.data.labels import THORAX_LABELS

#: Base intensities (HU) before the per-case contrast, offset, smoothing and noise.
_HU = {
    "air": -1000.0, "fat": -100.0, "med_fat": -90.0, "muscle": 40.0, "lung": -850.0,
    "fissure": -700.0, "liver": 60.0, "abdomen": 35.0, "oesophagus": 25.0, "autochthon": 50.0,
    "disc": 80.0, "bone_cortex": 400.0, "bone_trab": 250.0, "cord": 25.0, "rib": 600.0,
    "cartilage": 120.0, "sternum": 400.0, "sternum_inner": 300.0, "myocardium": 40.0,
    "blood_pool": 70.0, "aorta": 200.0, "vein": 180.0, "trachea_wall": 30.0, "thyroid": 90.0,
    "nodule": 30.0, "effusion": 15.0,
}

#: Label name -> id, the index into :data:`~napari_agg2exp.data.labels.THORAX_LABELS`.
_L = {name: i for i, name in enumerate(THORAX_LABELS)}
