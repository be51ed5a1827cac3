"""MONAI bundles: loading rules, and agreement with MONAI's own machinery (issue 12, item 1).

The reference is the bundle run the way MONAI runs it: ``ConfigParser`` builds the bundle's
preprocessing ``Compose`` (``LoadImaged`` reading the NIfTI file), network and ``SlidingWindowInferer``
from the config, and the bundle's own post-processing (``Activationsd``, ``Invertd``, ``AsDiscreted``)
maps the prediction back to the input grid. Our side goes through ``load_model`` + ``prepare_case``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Orientationd, Spacingd

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.phantom import make_phantom
from napari_agg2exp.data.preprocessing import preprocess, preprocess_labels, to_input_grid
from napari_agg2exp.data.volume import Volume, load_volume, save_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.bundle_transforms import BundlePreprocessing, prediction_order
from napari_agg2exp.models.inference import sliding_window_logits
from napari_agg2exp.models.loading import load_model
from napari_agg2exp.models.prepared import prepare_case

sys.path.insert(0, str(Path(__file__).parent))
from bundles import SWIN_CLASSES, WHOLEBODY_CLASSES, write_bundle

SWIN_ROI = [64, 32, 32]  # SwinUNETR: multiples of 32, > 1 voxel at the bottleneck (instance norm)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def _scan(tmp_path: Path, shape, spacing, zero_slab: bool) -> tuple[Path, Volume]:
    """A phantom CT stored LPS-like (x and y flipped), as the reference reads it from disk."""
    case = make_phantom(0, shape=shape, spacing=spacing, pathology=False)
    arr = case.image[::-1, ::-1].astype(np.float32).copy()
    if zero_slab:  # exact zeros, as outside a scanner's field of view: NormalizeIntensity(nonzero) leaves them
        arr[:, :, :2] = 0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    path = save_volume(Volume(arr, case.affine @ flip, "scan"), tmp_path / "scan.nii.gz")
    return path, load_volume(path)


def _reference(bundle: Path, image: Path, drop_img_size: bool = False) -> dict:
    """The bundle run by MONAI: preprocessed image, model-grid logits, post-processed prediction, margin."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    if drop_img_size:  # written for MONAI 1.4; MONAI >= 1.5 SwinUNETR has no img_size
        net_def = parser.get("network_def")
        net_def.pop("img_size", None)
        parser["network_def"] = net_def
    pre = parser.get_parsed_content("preprocessing")
    data = pre({"image": str(image)})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(data["image"][None], net)[0]
    d = {"image": data["image"], "pred": logits}
    post = [parser.get_parsed_content(f"postprocessing#transforms#{i}") for i in range(3)]  # no SaveImaged
    names = [type(t).__name__ for t in post]
    margin = None
    for t in post:
        if type(t).__name__ == "AsDiscreted" and names.index("Invertd") < names.index("AsDiscreted"):
            top = d["pred"].as_tensor().topk(2, 0).values  # inverted probabilities (bilinear)
            margin = np.asarray(top[0] - top[1])
        d = t(d)
    if margin is None:  # argmax before Invertd: the margin goes back the way the labels do
        top = torch.softmax(logits.as_tensor(), 0).topk(2, 0).values
        inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)
        margin = np.asarray(inv({"image": data["image"], "pred": MetaTensor((top[0] - top[1])[None])})["pred"][0])
    return {"x": np.asarray(data["image"][0]), "logits": np.asarray(logits), "pred": np.asarray(d["pred"][0]),
            "margin": margin, "pre": pre}


def _compare(model, volume: Volume, ref: dict) -> dict:
    case = prepare_case(model, volume)
    logits = sliding_window_logits(model.network, case.inputs[None], case.plan, sw_batch_size=case.sw_batch_size)
    crop = case.crop
    sure = ref["margin"] > 0.02
    return {
        "pre_rel": _rel(case.pre.array[crop], ref["x"]),
        "logits_rel": _rel(logits[(slice(None),) + crop].numpy(), ref["logits"]),
        "agreement": float((case.prediction.array[sure] == ref["pred"][sure]).mean()),
        # the other order (argmax on the model grid, labels back by nearest neighbour), for negative controls
        "nearest_agreement": float((to_input_grid(case.labels, case.pre, mode="nearest")[sure] == ref["pred"][sure]).mean()),
        "sure_fraction": float(sure.mean()),
        "windows": len(case.plan),
        "padded": case.pre.array.shape != ref["x"].shape,
    }


def _without(model, name: str):
    pre = model.preprocessing
    kept = [t for t in pre.transforms if type(t).__name__ != name]
    assert len(kept) == len(pre.transforms) - 1
    return BundlePreprocessing(kept, pre.image_key, pre.padding_mode, pre.cval)


def test_swin_unetr_btcv_bundle_matches_monai(tmp_path):
    bundle = write_bundle("swin_unetr_btcv", tmp_path / "swin", width=12, roi_size=SWIN_ROI, last_layer_scale=3.0)
    # an arbitrary anisotropic grid whose voxel centres do not fall on the model grid's: the bundle's own
    # order (softmax, bilinear Invertd, argmax) must be followed -- labels by nearest neighbour agree on ~89%
    image, volume = _scan(tmp_path, (40, 26, 24), (2.3, 2.7, 1.7), zero_slab=False)
    with pytest.warns(UserWarning, match=r"img_size.*dropped"):
        model = load_model(bundle, device="cpu")  # no --trust-bundle: imports/device/datalist are not read
    assert model.class_names == SWIN_CLASSES
    assert (model.window_size, model.overlap, model.blend, model.sw_batch_size) == ((64, 32, 32), 0.5, "constant", 4)
    assert [Path(f).name for f in model.files] == ["metadata.json", "inference.json", "model.pt"]
    ref = _reference(bundle, image, drop_img_size=True)
    assert len(np.unique(ref["pred"])) >= 5
    res = _compare(model, volume, ref)
    print(model.source, res, "reference classes:", len(np.unique(ref["pred"])))
    assert res["windows"] > 1 and res["padded"]
    assert res["pre_rel"] <= 1e-4 and res["logits_rel"] <= 1e-4, res
    assert res["agreement"] >= 0.99 and res["sure_fraction"] > 0.5, res
    assert model.preprocessing.prediction_from == "probabilities"
    assert res["nearest_agreement"] < 0.97, res  # negative control: the order of operations matters here
    # negative control: the same check without the intensity window fails
    wrong = preprocess(volume, _without(model, "ScaleIntensityRanged"), model.window_size)
    assert _rel(wrong.array[wrong.crop], ref["x"]) > 1e-4


def test_wholebody_bundle_matches_monai(tmp_path):
    bundle = write_bundle("wholebody_ct", tmp_path / "wb", width=8, roi_size=32, last_layer_scale=20.0)
    image, volume = _scan(tmp_path, (96, 48, 24), (1.2, 1.25, 1.6), zero_slab=True)
    with pytest.raises(Agg2ExpError, match=r"pixdim.*--trust-bundle"):
        load_model(bundle, device="cpu")
    model = load_model(bundle, device="cpu", trust_bundle=True)
    assert model.class_names == WHOLEBODY_CLASSES and model.num_classes == 105
    assert (model.window_size, model.overlap, model.blend, model.sw_batch_size) == ((32, 32, 32), 0.25, "gaussian", 1)
    assert model.preprocessing.padding_mode == "replicate"
    assert model.preprocessing.prediction_from == "labels"  # its post-processing: argmax, then Invertd(nearest)
    ref = _reference(bundle, image)
    assert len(np.unique(ref["pred"])) >= 5
    res = _compare(model, volume, ref)
    print(model.source, res, "reference classes:", len(np.unique(ref["pred"])))
    assert res["windows"] > 1 and res["padded"]
    assert res["pre_rel"] <= 1e-4 and res["logits_rel"] <= 1e-4, res
    assert res["agreement"] >= 0.99 and res["sure_fraction"] > 0.2, res
    # negative control: without NormalizeIntensity(nonzero) the preprocessed tensor differs
    wrong = preprocess(volume, _without(model, "NormalizeIntensityd"), model.window_size)
    assert _rel(wrong.array[wrong.crop], ref["x"]) > 1e-4
    # label volumes go to the model grid as MONAI's Orientationd + Spacingd(nearest) take them
    labels = load_volume(image).like(np.asarray(make_phantom(0, shape=(96, 48, 24), spacing=(1.2, 1.25, 1.6),
                                                             pathology=False).labels[::-1, ::-1], np.int16))
    pre = preprocess(volume, model.preprocessing, model.window_size)
    ours = preprocess_labels(labels, pre)[pre.crop]
    lab = MetaTensor(torch.from_numpy(labels.array[None].astype(np.float32)), affine=torch.as_tensor(labels.affine))
    expect = Compose([Orientationd("l", axcodes="RAS"), Spacingd("l", pixdim=[1.5] * 3, mode="nearest")])({"l": lab})["l"]
    assert np.array_equal(ours, np.asarray(expect[0]))


def test_expressions_read_refused_or_ignored(tmp_path):
    def literal(cfg):
        cfg["preprocessing"]["transforms"][3]["pixdim"] = "$[1.5, 1.5, 2.0]"  # a plain literal
        cfg["inferer"]["sw_device"] = "$torch.device('cpu')"  # device entries are the tool's to pick
        cfg["overlap_value"] = "$0.5"
        cfg["inferer"]["overlap"] = "@overlap_value"  # a reference to a literal

    b = write_bundle("swin_unetr_btcv", tmp_path / "lit", width=12, roi_size=SWIN_ROI, edit=literal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(b, device="cpu")
    assert model.overlap == 0.5
    assert model.preprocessing.to_dict()["transforms"][1]["pixdim"] == [1.5, 1.5, 2.0]

    def unsafe(cfg):
        cfg["inferer"]["overlap"] = "$0.5 if True else 0.25"

    b = write_bundle("swin_unetr_btcv", tmp_path / "unsafe", width=12, roi_size=SWIN_ROI, edit=unsafe)
    with pytest.raises(Agg2ExpError, match=r"inferer#overlap.*0\.5 if True.*--trust-bundle"):
        load_model(b, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_model(b, device="cpu", trust_bundle=True).overlap == 0.5


def test_unsupported_transform_is_one_line_exit_2(tmp_path, capsys):
    def flip(cfg):
        cfg["preprocessing"]["transforms"].insert(4, {"_target_": "RandFlipd", "keys": "@image_key", "prob": 0.5})

    b = write_bundle("wholebody_ct", tmp_path / "flip", width=8, roi_size=32, edit=flip)
    image, _ = _scan(tmp_path, (24, 24, 24), (1.5, 1.5, 1.5), zero_slab=False)
    rc = main(["segment", str(image), "--model", str(b), "--trust-bundle", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "RandFlipd" in err[0] and err[0].startswith("agg2exp: error:"), err
    assert not (tmp_path / "out").exists()


def test_torchscript_bundle_gives_the_same_logits(tmp_path):
    pt = load_model(write_bundle("wholebody_ct", tmp_path / "pt", width=8, roi_size=32, seed=3), device="cpu",
                    trust_bundle=True)
    ts = load_model(write_bundle("wholebody_ct", tmp_path / "ts", width=8, roi_size=32, seed=3, torchscript=True),
                    device="cpu", trust_bundle=True)
    assert isinstance(ts.network, torch.jit.ScriptModule) and ts.files[-1].endswith("model.ts")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ts.network(x), pt.network(x), rtol=1e-4, atol=1e-4)


def test_prediction_order_is_read_from_the_postprocessing():
    act = {"_target_": "Activationsd", "keys": "pred", "softmax": True}
    inv = {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "nearest_interp": False}
    arg = {"_target_": "monai.transforms.AsDiscreted", "keys": "pred", "argmax": True}
    save = {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"}  # never evaluated
    post = lambda *t: {"postprocessing": {"_target_": "Compose", "transforms": list(t)}}
    assert prediction_order(post(act, inv, arg, save)) == "probabilities"  # swin_unetr_btcv
    assert prediction_order(post(act, arg, {**inv, "nearest_interp": True}, save)) == "labels"  # wholeBody_ct
    assert prediction_order(post(act, {k: v for k, v in inv.items() if k != "nearest_interp"}, arg)) == "labels"
    assert prediction_order(post(inv, arg)) == "logits"
    assert prediction_order({"post": post(act, inv, arg)["postprocessing"], "postprocessing": "@post"}) == "probabilities"
    assert prediction_order({}) == "probabilities"
