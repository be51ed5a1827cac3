"""Segmentation quality: Dice and IoU per class (table ``case,class,dice,iou``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["confusion_counts", "dice_iou", "quality_table"]


def confusion_counts(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (intersection, |pred|, |gt|) in one bincount pass."""
    p = np.asarray(pred, dtype=np.int64).ravel()
    g = np.asarray(gt, dtype=np.int64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    g = np.clip(g, 0, n_classes)  # unknown ids -> an extra bin
    p = np.clip(p, 0, n_classes)
    joint = np.bincount(p * (n_classes + 1) + g, minlength=(n_classes + 1) ** 2).reshape(n_classes + 1, n_classes + 1)
    inter = np.diag(joint)[:n_classes].astype(float)
    return inter, joint.sum(1)[:n_classes].astype(float), joint.sum(0)[:n_classes].astype(float)


def dice_iou(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU per class; NaN where the class is in neither volume."""
    inter, sp, sg = confusion_counts(pred, gt, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sp + sg > 0, 2 * inter / (sp + sg), np.nan)
        iou = np.where(sp + sg - inter > 0, inter / (sp + sg - inter), np.nan)
    return dice, iou


def quality_table(pred: np.ndarray, gt: np.ndarray, class_names: Sequence[str], case: str = "case") -> pd.DataFrame:
    """Long table ``case,class,dice,iou`` (pandas DataFrame), one row per class."""
    dice, iou = dice_iou(pred, gt, len(class_names))
    return pd.DataFrame({"case": case, "class": list(class_names), "dice": dice, "iou": iou})
