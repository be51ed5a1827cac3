"""Property tests (issue 15): random NIfTI headers and random CLI options give a result or an
:class:`Agg2ExpError`, never another exception.

``load_volume`` + ``preprocess`` get random shapes, dtypes, affines (zero, NaN, huge and tiny voxel sizes),
intensity scalings and model preprocessing; ``segment`` and ``explain`` get random option values and run
up to the network (the sliding window is replaced by a stub, so each example stops where the model would
start: every check of the options has run by then).
"""

from __future__ import annotations

import itertools
import warnings

import nibabel as nib
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from napari_agg2exp.attribution.methods import METHODS
from napari_agg2exp.cli.main import main
from napari_agg2exp.data.preprocessing import PreprocessingSpec, preprocess
from napari_agg2exp.data.volume import load_volume
from napari_agg2exp.errors import Agg2ExpError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "float32", "float64", "complex64", "RGB"]
odd = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), 1e30, 1e-30, -1.0])
size = st.one_of(st.floats(0.1, 10.0), odd)


@st.composite
def headers(draw):
    ndim = draw(st.sampled_from([2, 3, 3, 3, 4, 5]))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    aff = np.eye(4)
    aff[:3, :3] = np.diag([draw(size) for _ in range(3)])
    if draw(st.booleans()):  # a rotation / permutation / shear
        with np.errstate(all="ignore"):
            aff[:3, :3] = aff[:3, :3] @ np.array(draw(st.permutations(list(np.eye(3)))))
        aff[0, 1] += draw(st.sampled_from([0.0, 0.0, 0.3, float("nan")]))
    aff[:3, 3] = [draw(st.floats(-1e3, 1e3)) for _ in range(3)]
    slope = draw(st.sampled_from([None, 1.0, 2.5, 0.0, float("nan"), float("inf")]))
    inter = draw(st.sampled_from([None, 0.0, -1024.0, float("nan")]))
    qcode, scode = draw(st.sampled_from([(1, 1), (0, 0), (0, 2), (1, 0)]))
    values = draw(st.sampled_from(["random", "nan", "inf", "const"]))
    return shape, dtype, aff, slope, inter, qcode, scode, values


@st.composite
def model_specs(draw):
    codes = ["".join(p) for p in itertools.product("LR", "PA", "IS")] + ["SAR", "AIL"]
    orientation = draw(st.sampled_from([None, *codes]))
    spacing = draw(st.one_of(st.none(), st.tuples(*[st.floats(0.5, 5.0)] * 3)))
    window = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 12)] * 3)))
    return PreprocessingSpec(orientation=orientation, spacing=spacing), window


def _write(path, shape, dtype, aff, slope, inter, qcode, scode, values, rng):
    if dtype == "RGB":
        arr = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        arr = (rng.normal(0, 100, shape) if values == "random" else np.ones(shape)).astype(dtype)
        if values in ("nan", "inf") and arr.dtype.kind in "fc" and arr.size:
            arr.flat[:: max(1, arr.size // 3)] = np.nan if values == "nan" else np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # nibabel refuses some of these headers itself: not the code under test
            img = nib.Nifti1Image(arr, aff)
            img.set_qform(aff if qcode else None, code=qcode)
            img.set_sform(aff if scode else None, code=scode)
            if slope is not None:
                img.header.set_slope_inter(slope, inter)
            nib.save(img, str(path))
        except Exception:  # noqa: BLE001 - whatever nibabel refuses to write is skipped
            assume(False)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


@SETTINGS
@given(h=headers(), pre=model_specs(), seed=st.integers(0, 3), gz=st.booleans())
def test_load_and_preprocess_give_a_result_or_one_error(h, pre, seed, gz, scratch):
    path = scratch / ("v.nii.gz" if gz else "v.nii")
    _write(path, *h, np.random.default_rng(seed))
    spec, window = pre
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NaN fill warnings are expected
        try:
            vol = load_volume(path)
            out = preprocess(vol, spec, window)
        except Agg2ExpError as e:
            assert "\n" not in str(e) and str(e)
            return
    assert np.isfinite(out.array).all()  # a model never sees NaN/Inf
    assert out.array.shape == tuple(max(n, w) for n, w in zip(out.resampled_shape, window or out.resampled_shape))


# --- the CLI's options ------------------------------------------------------------------------------------

class _Reached(Exception):
    """Raised by the stubbed sliding window: every check of the options passed."""


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    import torch
    from conftest import tiny_spec

    from napari_agg2exp.data.volume import Volume, save_volume
    from napari_agg2exp.models.loading import build_network, save_model

    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(1)
    spec = tiny_spec()
    model = save_model(build_network(spec), spec, d / "model")
    ct = save_volume(Volume(np.random.default_rng(0).normal(0, 300, (12, 11, 10)).astype(np.float32)), d / "ct.nii.gz")
    return d, model, ct


def _stub_network(*args, **kwargs):
    raise _Reached


ints = st.one_of(st.integers(-3, 40), st.sampled_from([2000, 10**9]))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 50))
word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_:0123456789 ", min_size=0, max_size=12)


@st.composite
def option_values(draw):
    opts = []
    if draw(st.booleans()):
        opts += ["--window-size", *[str(draw(ints)) for _ in range(draw(st.sampled_from([1, 3, 2])))]]
    if draw(st.booleans()):
        opts += ["--overlap", str(draw(numbers))]
    if draw(st.booleans()):
        opts += ["--blend", draw(st.one_of(st.sampled_from(["constant", "gaussian", "Gaussian"]), word))]
    if draw(st.booleans()):
        opts += ["--sw-batch-size", str(draw(ints))]
    if draw(st.booleans()):
        opts += ["--device", draw(st.sampled_from(["auto", "cpu", "cuda:7", "mps", "bogus", "cpu:0"]))]
    return opts


@st.composite
def method_values(draw):
    opts = ["--method", draw(st.one_of(st.sampled_from(sorted(METHODS)), word))]
    for flag, values in (("--steps", ints), ("--samples", ints), ("--noise-level", numbers),
                         ("--baseline", numbers), ("--batch-size", ints), ("--cubes-per-axis", ints),
                         ("--occlusion-window", ints), ("--classes", st.sampled_from(["all", "a", "b,a", "zz", "7"]))):
        if draw(st.booleans()):
            opts += [flag, str(draw(values))]
    return opts


@SETTINGS
@given(command=st.sampled_from(["segment", "explain"]), window=option_values(), method=method_values(),
       n=st.integers(0, 10**9))
def test_cli_options_give_a_result_or_one_error(command, window, method, n, cli_inputs, monkeypatch, capsys):
    d, model, ct = cli_inputs
    from napari_agg2exp.models import prepared

    stubbed = [n for n in ("sliding_window_segment", "sliding_window_logits") if hasattr(prepared, n)]
    assert stubbed
    for name in stubbed:  # where the network would start
        monkeypatch.setattr(prepared, name, _stub_network)
    argv = [command, str(ct), "--model", str(model), "--out", str(d / f"out{n}"), *window,
            *(method if command == "explain" else [])]
    capsys.readouterr()  # drop what earlier examples printed
    try:
        rc = main(argv)
    except _Reached:
        return
    except SystemExit as e:  # argparse's own one-line usage error (a value of the wrong type)
        assert e.code == 2
        return
    finally:
        assert not (d / f"out{n}").exists()
    assert rc == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("agg2exp: warning")]
    assert len(err) == 1 and err[0].startswith("agg2exp: error:"), err
