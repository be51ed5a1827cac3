"""nnU-Net v2 result folders against nnU-Net's own machinery (``nnUNetPredictor``, its resampling,
its window placement), on a tiny random checkpoint written the way nnU-Net's trainer writes it."""

from __future__ import annotations

import copy
import itertools
import json
import pathlib
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_agg2exp.cli.main import main
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.inference import (
    SlidingWindow,
    nnunet_gaussian,
    nnunet_window_slices,
    sliding_window_logits,
)
from napari_agg2exp.models.loading import load_model
from napari_agg2exp.models.nnunet import FoldEnsemble, MirrorEnsemble, load_nnunet
from napari_agg2exp.models.nnunet_preprocessing import nnunet_resample
from napari_agg2exp.models.prepared import prepare_case

pytest.importorskip("dynamic_network_architectures")

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}
PATCH = [32, 32, 32]
STAGES = 3
INTENSITY = {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1000.0,
             "percentile_00_5": -950.0, "percentile_99_5": 900.0, "std": 250.0}


def _configuration(form: str) -> dict:
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": PATCH, "median_image_size_in_voxels": [36, 51, 43],
        "spacing": [2.0, 1.5, 1.5],  # transposed axes: the low-resolution axis first
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    }
    kernels, strides = [[3, 3, 3]] * STAGES, [[1, 1, 1]] + [[2, 2, 2]] * (STAGES - 1)
    if form == "current":
        conf["architecture"] = {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": STAGES, "features_per_stage": [4, 8, 16],
                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels, "strides": strides,
                "n_conv_per_stage": [1] * STAGES, "n_conv_per_stage_decoder": [1] * (STAGES - 1),
                "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    else:  # the plans form before nnU-Net v2.3 ("UNet_class_name", converted by ConfigurationManager)
        conf.update({"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4, "unet_max_num_features": 16,
                     "n_conv_per_stage_encoder": [1] * STAGES, "n_conv_per_stage_decoder": [1] * (STAGES - 1),
                     "num_pool_per_axis": [2, 2, 2], "pool_op_kernel_sizes": strides,
                     "conv_kernel_sizes": kernels})
    return conf


def _plans(form: str, reader: str = "NibabelIO") -> dict:
    return {
        "dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 0.8, 0.8], "original_median_shape_after_transp": [24, 96, 80],
        "image_reader_writer": reader, "transpose_forward": [0, 2, 1], "transpose_backward": [0, 2, 1],
        "configurations": {"3d_fullres": _configuration(form)},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
    }


def _network(seed: int) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    net = PlainConvUNet(1, STAGES, [4, 8, 16], torch.nn.Conv3d, [[3, 3, 3]] * STAGES,
                        [[1, 1, 1]] + [[2, 2, 2]] * (STAGES - 1), [1] * STAGES, len(LABELS), [1] * (STAGES - 1),
                        conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    with torch.no_grad():  # random weights predict one class: a sharper last layer gives several
        seg = net.decoder.seg_layers[-1]
        seg.weight.mul_(8.0)
        seg.bias.copy_(torch.tensor([0.5, 0.0, -0.2, 0.2]))
    return net


def _save_checkpoint(path: pathlib.Path, net: torch.nn.Module, plans: dict, dataset: dict, fold: int,
                     extra: dict | None = None) -> None:
    """What ``nnUNetTrainer.save_checkpoint`` writes (numpy scalars in the logging, as its trainer logs them)."""
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    losses = np.array([0.9, 0.7])
    dice = [np.float64(0.1), np.float64(0.2), np.float64(0.3)]
    ckpt = {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.nanmean(dice)], "ema_fg_dice": [np.nanmean(dice) * 0.9],
                    "dice_per_class_or_region": [dice], "train_losses": [np.mean(losses)],
                    "val_losses": [np.mean(losses) + 0.1], "lrs": [0.01], "epoch_start_timestamps": [1.0],
                    "epoch_end_timestamps": [2.0]},
        "_best_ema": np.nanmean(dice) * 0.9,
        "current_epoch": 1,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(path))


def make_result_folder(root: pathlib.Path, form: str = "current", folds: tuple[int, ...] = (0,),
                       reader: str = "NibabelIO", extra: dict | None = None,
                       mirror_axes: tuple[int, ...] = (0, 1, 2)) -> pathlib.Path:
    folder = root / "Dataset999_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 10, "file_ending": ".nii.gz"}
    plans = _plans(form, reader)
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text(json.dumps(plans))
    for f in folds:
        _save_checkpoint(folder / f"fold_{f}" / "checkpoint_final.pth", _network(f), plans, dataset, f,
                         {"inference_allowed_mirroring_axes": mirror_axes, **(extra or {})})
    return folder


def make_scan(path: pathlib.Path, shape: tuple[int, int, int] = (80, 64, 20)) -> pathlib.Path:
    """Voxels of 0.8x0.8x3 mm (anisotropic), axes permuted and flipped (not RAS), a zero border."""
    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    img = np.full(x.shape, -1000.0)
    img[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 20.0
    img[((x - 0.3) / 0.35) ** 2 + (y / 0.3) ** 2 + (z / 0.6) ** 2 < 1] = 150.0
    img[((x + 0.4) / 0.2) ** 2 + ((y - 0.3) / 0.25) ** 2 + (z / 0.5) ** 2 < 1] = -300.0
    img[((x + 0.1) / 0.1) ** 2 + ((y + 0.5) / 0.1) ** 2 < 1] = 800.0
    img += rng.normal(0, 20, img.shape)
    img[:6] = 0.0  # outside the scanner's field of view: nnU-Net crops it away
    img[:, -3:] = 0.0
    affine = np.array([[0, -0.8, 0, 40], [-0.8, 0, 0, 30], [0, 0, 3.0, -20], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(path))
    return path


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> pathlib.Path:
    return make_scan(tmp_path_factory.mktemp("scan") / "ct.nii.gz")


def nnunet_reference(folder: pathlib.Path, image: pathlib.Path, mirroring: bool = False) -> np.ndarray:
    """nnU-Net's own prediction on the input grid (``nnUNetPredictor``, NibabelIO)."""
    predict = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO

    predictor = predict.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                        perform_everything_on_device=False, device=torch.device("cpu"),
                                        allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=None)
    data, props = NibabelIO().read_images([str(image)])
    seg = predictor.predict_single_npy_array(data, props, None, None, False)
    return np.asarray(seg).transpose(2, 1, 0)  # NibabelIO.write_seg: back to the file's voxel axes


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def _stitched_logits(model, case) -> np.ndarray:
    with torch.no_grad():
        return sliding_window_logits(model.network, case.inputs[None], case.plan).numpy()


@pytest.mark.parametrize("form", ["current", "old"])
def test_segmentation_matches_nnunet_predictor(form, tmp_path, scan):
    folder = make_result_folder(tmp_path, form)
    ref = nnunet_reference(folder, scan)
    assert len(np.unique(ref)) >= 3, np.unique(ref)
    model = load_model(folder, device="cpu")
    assert model.class_names == list(LABELS)
    assert (model.placement, model.overlap, model.blend, model.window_size) == ("nnunet", 0.5, "gaussian", (32, 32, 32))
    case = prepare_case(model, load_volume(scan))
    assert len(case.plan) >= 4 and case.pre.pad[0] != (0, 0)  # several windows, padded to the patch
    # nnU-Net's export: the stitched logits resampled to the input grid, then the argmax -- prepare_case does
    # it class by class from spilled logits; all in memory here
    logits = _stitched_logits(model, case)
    in_memory = case.pre.inverse(logits, "trilinear").argmax(0)
    assert agreement(in_memory, ref) >= 0.99
    assert model.preprocessing.prediction_from == "logits"
    assert np.array_equal(case.prediction.array, in_memory)
    print(form, "agreement", agreement(case.prediction.array, ref), "nearest labels",
          agreement(case.pre.inverse(case.labels, "nearest"), ref))
    assert agreement(case.prediction.array, ref) >= 0.99
    # negative control: labels mapped back by nearest neighbour (the other order) do not agree
    assert agreement(case.pre.inverse(case.labels, "nearest"), ref) < 0.97
    assert case.prediction.array[:6].max() == 0  # nnU-Net's cropped border is background


def test_folds_and_tta_match_nnunet(tmp_path):
    scan = make_scan(tmp_path / "small.nii.gz", (48, 40, 10))  # one window: the ensembles are what is tested
    folder = make_result_folder(tmp_path, "current", folds=(0, 1), mirror_axes=(1,))
    model = load_model(folder, device="cpu", tta=True)
    assert isinstance(model.network, MirrorEnsemble) and isinstance(model.network.network, FoldEnsemble)
    ref = nnunet_reference(folder, scan, mirroring=True)
    assert len(np.unique(ref)) >= 3
    pre = model.preprocessing.apply(load_volume(scan), model.window_size)
    plan = SlidingWindow.plan(pre.array.shape, model.window_size, model.overlap, model.blend, placement="nnunet")
    with torch.no_grad():
        logits = sliding_window_logits(model.network, torch.from_numpy(pre.array)[None], plan).numpy()
    assert agreement(pre.inverse(logits, "trilinear").argmax(0), ref) >= 0.99
    assert isinstance(load_model(folder, device="cpu").network, FoldEnsemble)  # mirroring only with --tta


def test_wrappers_are_the_means_they_claim_and_differentiable():
    nets = [_network(0), _network(1)]
    x = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    ens = FoldEnsemble(nets)
    torch.testing.assert_close(ens(x), (nets[0](x) + nets[1](x)) / 2)
    tta = MirrorEnsemble(nets[0], (0, 2))
    flips = [(), (2,), (4,), (2, 4)]
    want = sum(torch.flip(nets[0](torch.flip(x, f)), f) if f else nets[0](x) for f in flips) / 4
    torch.testing.assert_close(tta(x), want)
    tta(x)[0, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_resampling_and_window_placement_equal_nnunets():
    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    sliding = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1, 9, 20, 17)).astype(np.float32)
    for cur, new, shape, kw in [
        ([3.0, 0.8, 0.8], [2.0, 1.5, 1.5], (14, 11, 9), {"order": 3, "order_z": 0}),   # separate z
        ([1.0, 0.8, 0.9], [1.5, 1.5, 1.5], (6, 11, 10), {"order": 3, "order_z": 0}),   # isotropic
        ([2.0, 1.5, 1.5], [3.0, 0.8, 0.8], (6, 37, 32), {"order": 1, "order_z": 0}),   # probabilities back
        ([3.0, 0.8, 0.8], [2.0, 1.5, 1.5], (14, 11, 9), {"order": 1, "order_z": 1}),
    ]:
        want = resampling.resample_data_or_seg_to_shape(data, shape, cur, new, is_seg=False,
                                                        force_separate_z=None, **kw)
        got = nnunet_resample(data, shape, cur, new, force_separate_z=None, **kw)
        np.testing.assert_allclose(got, want, atol=1e-5)
    for shape in [(36, 51, 43), (32, 33, 100), (32, 32, 32)]:
        steps = sliding.compute_steps_for_sliding_window(shape, PATCH, 0.5)
        want = sorted(itertools.product(*steps))
        assert sorted(tuple(s.start for s in sl) for sl in nnunet_window_slices(shape, PATCH, 0.5)) == want


def test_missing_fold_and_unsupported_folders(tmp_path):
    folder = make_result_folder(tmp_path, "current")
    with pytest.raises(Agg2ExpError, match="fold_3/checkpoint_final.pth"):
        load_nnunet(folder, device=torch.device("cpu"), folds=["3"])
    (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "checkpoint_best.pth")
    with pytest.raises(Agg2ExpError, match="no fold_N/checkpoint_final.pth.*checkpoint_best"):
        load_model(folder, device="cpu")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(Agg2ExpError, match="region-based"):
        load_model(folder, device="cpu")


def test_plans_naming_other_modules_need_trust(tmp_path):
    folder = make_result_folder(tmp_path, "current")
    plans = json.loads((folder / "plans.json").read_text())
    bad = copy.deepcopy(plans)
    bad["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(bad))
    with pytest.raises(Agg2ExpError, match="os.system.*--trust-checkpoint"):
        load_model(folder, device="cpu")


def test_pickle_checkpoint_is_refused_through_the_cli(tmp_path, scan, capsys):
    # a path object in the checkpoint (as some trainers store their output folder) needs pickle
    folder = make_result_folder(tmp_path, "current", extra={"output_folder": pathlib.PurePosixPath("/tmp/x")})
    out = tmp_path / "out"
    assert main(["segment", str(scan), "--model", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agg2exp: error:") and "--trust-checkpoint" in err[0], err
    assert not out.exists()
    model = load_model(folder, device="cpu", trust_checkpoint=True)
    assert model.num_classes == len(LABELS)


def test_labels_map_to_the_model_grid_and_back(tmp_path, scan):
    folder = make_result_folder(tmp_path, "current")
    model = load_model(folder, device="cpu")
    vol = load_volume(scan)
    pre = model.preprocessing.apply(vol, model.window_size)
    # a world point maps to the same place through the model grid's affine and the input's
    lab = np.zeros(vol.shape, np.int16)
    lab[40:60, 30:50, 8:16] = 2
    on_grid = pre.forward_labels(lab)
    back = pre.inverse(on_grid.astype(np.uint8), "nearest")
    assert agreement(back, lab) > 0.97
    k = np.argwhere(on_grid == 2).mean(0)
    world_model = pre.affine @ np.r_[k, 1]
    world_input = vol.affine @ np.r_[np.argwhere(lab == 2).mean(0), 1]
    assert np.abs(world_model - world_input)[:3].max() < 2.0  # within a voxel (mm)


def test_gaussian_is_nnunets():
    sliding = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    for ws in [(32, 32, 32), (28, 40, 33)]:
        want = sliding.compute_gaussian(ws, 1 / 8, 10, dtype=torch.float16, device=torch.device("cpu")).float()
        torch.testing.assert_close(nnunet_gaussian(ws), want, rtol=0, atol=0)


def test_checkpoint_written_with_numpy_1_loads_without_pickle(tmp_path):
    """Older checkpoints (TotalSegmentator's) name ``numpy.core.multiarray.scalar``; numpy 2 writes ``numpy._core``."""
    folder = make_result_folder(tmp_path, "current")
    path = folder / "fold_0" / "checkpoint_final.pth"
    old = tmp_path / "old.pth"
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            data = zi.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zo.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(str(old))
    old.replace(path)
    model = load_model(folder, device="cpu")
    assert model.num_classes == len(LABELS)
