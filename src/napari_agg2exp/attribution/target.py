"""The explained scalar: stitched logit sum over the clean prediction mask (SPEC §1–2).

``f_c(x') = Σ_{v∈M_c} z_c(x')_v`` with ``z`` the sliding-window stitched logits and ``M_c`` fixed
from the clean input. Its gradient is, per window, a vector-Jacobian product with
``grad_output = 1[M_c] · b_w / count`` restricted to the window; summing these per-window input
gradients into the volume is exact and needs one window's graph at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_agg2exp.errors import Agg2ExpError
from napari_agg2exp.models.inference import SlidingWindow, forward_logits
from napari_agg2exp.progress import CancelFlag, ProgressCallback, check_cancel, report

__all__ = ["SlidingWindowTarget", "WindowCache"]


@dataclass
class _WindowTargets:
    """Per window: its slices and the target rows (indices into the class list) whose mask meets it."""

    slices: tuple
    class_rows: list[int]


class SlidingWindowTarget:
    """A model + sliding window + fixed class masks, reduced to one score per target class.

    This is the ``forward_func`` of every attribution method here (captum's "model or any
    modification of it"): it maps a volume (B, X, Y, Z) to scores (B, K) and accumulates exact input
    gradients of those scores window by window.

    Args:
        network: maps (B, 1, *window) -> (B, C, *window) logits.
        plan: the sliding-window plan (windows, blend weight, counts) on the model grid.
        prediction: (X, Y, Z) integer labels of the clean input (argmax of the stitched logits).
        classes: the target class ids (channels) to explain.
        sw_batch_size: windows per forward in :meth:`scores`.
        batch_classes: one batched VJP for all classes of a window (``is_grads_batched``); pays on a GPU.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        plan: SlidingWindow,
        prediction: torch.Tensor | np.ndarray,
        classes: Sequence[int],
        *,
        sw_batch_size: int = 1,
        batch_classes: bool | None = None,
    ):
        self.network = network
        self.plan = plan
        self.classes = [int(c) for c in classes]
        if not self.classes:
            raise Agg2ExpError("no target classes to explain")
        dev = plan.count.device
        self.device = dev
        pred = prediction if isinstance(prediction, torch.Tensor) else torch.as_tensor(np.asarray(prediction))
        pred = pred.to(dev).long()
        if tuple(pred.shape) != tuple(plan.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match the plan {plan.shape}")
        self.sw_batch_size = max(1, int(sw_batch_size))
        self.batch_classes = (dev.type == "cuda") if batch_classes is None else bool(batch_classes)
        self.mask_sizes = [int((pred == c).sum()) for c in self.classes]
        # small label type; the per-window weights 1[M_c]·b/count are built on the fly, one window at a time,
        # so memory stays at one window's worth whatever the volume size
        self._pred = pred.to(torch.int16 if int(pred.max()) < 32767 else torch.int32)
        self._inv_count = 1.0 / plan.count
        self.windows: list[_WindowTargets] = []
        for sl in plan.slices:
            present = set(torch.unique(self._pred[sl]).tolist())
            rows = [k for k, c in enumerate(self.classes) if c in present]
            self.windows.append(_WindowTargets(sl, rows))

    def window_weights(self, wt: _WindowTargets) -> torch.Tensor:
        """(K_w, *window) tensor ``1[M_c] · b / count`` for the classes present in one window."""
        p = self._pred[wt.slices]
        bc = self.plan.weight * self._inv_count[wt.slices]
        return torch.stack([(p == self.classes[k]).float() * bc for k in wt.class_rows])

    def subset(self, classes: Sequence[int]) -> SlidingWindowTarget:
        """The same scores for some of the classes (in the given order)."""
        return SlidingWindowTarget(self.network, self.plan, self._pred, classes, sw_batch_size=self.sw_batch_size,
                                   batch_classes=self.batch_classes)

    def with_network(self, network: torch.nn.Module) -> SlidingWindowTarget:
        """The same masks and windows with another network (e.g. a randomised copy)."""
        return SlidingWindowTarget(network, self.plan, self._pred, self.classes, sw_batch_size=self.sw_batch_size,
                                   batch_classes=self.batch_classes)

    def window_cache(self, clean: torch.Tensor, *, cancel: CancelFlag | None = None) -> WindowCache:
        """Scores of perturbed copies of ``clean`` that run only the windows a perturbation changes."""
        return WindowCache(self, clean, cancel=cancel)

    @property
    def num_targets(self) -> int:
        return len(self.classes)

    def _window_scores(self, z, wt: _WindowTargets, weights=None):
        """(B, K) contribution of one window's logits z (B, C, *w) to the stitched scores."""
        out = torch.zeros((z.shape[0], self.num_targets), dtype=torch.float32, device=z.device)
        if wt.class_rows:
            w = self.window_weights(wt) if weights is None else weights
            zc = z[:, [self.classes[k] for k in wt.class_rows]].float()  # (B, K_w, *w)
            out[:, wt.class_rows] = (zc * w[None]).flatten(2).sum(-1)
        return out

    def scores(self, inputs: torch.Tensor, *, progress: ProgressCallback | None = None,
               cancel: CancelFlag | None = None) -> torch.Tensor:
        """``f_c`` for each input and target class, no gradients.

        Args:
            inputs: (B, X, Y, Z) tensor on the model grid.

        Returns:
            (B, K) tensor.
        """
        x = inputs.to(self.device)
        total = torch.zeros((x.shape[0], self.num_targets), dtype=torch.float32, device=self.device)
        active = [i for i, wt in enumerate(self.windows) if wt.class_rows]
        with torch.no_grad():
            for done, i in enumerate(active):
                check_cancel(cancel)
                wt = self.windows[i]
                w = self.window_weights(wt)
                xs = x[(slice(None),) + wt.slices][:, None]
                for b0 in range(0, xs.shape[0], self.sw_batch_size):
                    z = forward_logits(self.network, xs[b0 : b0 + self.sw_batch_size], None)
                    total[b0 : b0 + z.shape[0]] += self._window_scores(z, wt, w)
                report(progress, done + 1, len(active), "forward")
        return total

    def accumulate_gradients(
        self,
        inputs: torch.Tensor,
        out: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        progress: ProgressCallback | None = None,
        cancel: CancelFlag | None = None,
    ) -> torch.Tensor:
        """Add ``Σ_b weights_b · ∇_x f_k(inputs_b)`` into ``out[k]`` for every target k.

        One forward per window (the B inputs batched), then one VJP per class present in the window.

        Args:
            inputs: (B, X, Y, Z) tensor.
            out: (K, X, Y, Z) float32 tensor, updated in place.
            weights: (B,) tensor of per-input weights (default 1).

        Returns:
            (B, K) scores ``f_k(inputs_b)`` computed on the way.
        """
        x = inputs.to(self.device)
        B = x.shape[0]
        w_b = (torch.ones(B, device=self.device) if weights is None
               else torch.as_tensor(weights, device=self.device).float())
        scores = torch.zeros((B, self.num_targets), dtype=torch.float32, device=self.device)
        active = [i for i, wt in enumerate(self.windows) if wt.class_rows]
        n_units = sum(len(self.windows[i].class_rows) for i in active)
        done = 0
        for i in active:
            check_cancel(cancel)
            wt = self.windows[i]
            xw = x[(slice(None),) + wt.slices][:, None].detach().clone().requires_grad_(True)
            rows = wt.class_rows
            w = self.window_weights(wt)  # (K_w, *window): 1[M_c] · b / count
            batched = self.batch_classes and len(rows) > 1
            with torch.enable_grad():
                z = forward_logits(self.network, xw, None)
                with torch.set_grad_enabled(batched):  # only the batched VJP goes through the scores
                    per_class = self._window_scores(z, wt, w)  # (B, K)
            scores += per_class.detach()
            if batched:
                sel = per_class[:, rows]  # (B, K_w)
                eye = torch.eye(len(rows), device=self.device)
                gouts = eye[:, None, :] * w_b[None, :, None]  # (K_w, B, K_w)
                (g,) = torch.autograd.grad(sel, xw, grad_outputs=gouts, is_grads_batched=True)
                out[(rows,) + wt.slices] += g[:, :, 0].sum(1)
                done += len(rows)
            else:
                # the VJP goes straight into the logits: grad_output = w_b · 1[M_c] · b / count on channel c
                # and 0 elsewhere (backpropagating through a masked-sum graph instead costs ~1.5x per class)
                gz = torch.zeros_like(z)
                wb = w_b.to(z.dtype).view(-1, *([1] * (z.ndim - 2)))
                for j, k in enumerate(rows):
                    check_cancel(cancel)
                    c = self.classes[k]
                    gz[:, c] = wb * w[j].to(z.dtype)
                    (g,) = torch.autograd.grad(z, xw, grad_outputs=gz, retain_graph=j < len(rows) - 1)
                    gz[:, c] = 0
                    out[(k,) + wt.slices] += g[:, 0].sum(0)
                    done += 1
                    report(progress, done, n_units, "gradients")
            del z
            report(progress, done, n_units, "gradients")
        return scores


class WindowCache:
    """Scores ``f(x')`` of perturbed copies ``x'`` of one clean input, running only the changed windows.

    ``f_c(x') = Σ_w s_w(x'[w])``, where ``s_w`` is the masked, blend-weighted class sum of window ``w``
    (``M_c`` fixed): it depends on the window's input only. The clean contributions ``s_w(x[w])`` are
    computed once; a window whose input equals the clean one (or that a given change mask does not meet)
    reuses its clean contribution and only the other windows run the network. The scores are those of
    :meth:`SlidingWindowTarget.scores` (up to float summation order). Callable as captum's ``forward_func``.

    Args:
        target: the stitched, masked class scores.
        clean: (X, Y, Z) model-grid input.

    Attributes:
        contributions: (n_windows, K) clean per-window contributions (0 for windows without target classes).
        clean_scores: (K,) ``f(x)``.
        network_windows: windows run through the network so far (the clean ones included).
        reused_windows: window contributions taken from a cached reference instead.
        calls: scored inputs (perturbed copies) so far.
    """

    def __init__(self, target: SlidingWindowTarget, clean: torch.Tensor, *, cancel: CancelFlag | None = None):
        self.target = target
        self.clean = clean.to(target.device).float().reshape(target.plan.shape)
        self.active = [i for i, wt in enumerate(target.windows) if wt.class_rows]
        sl = np.array([[(s.start, s.stop) for s in wt.slices] for wt in target.windows])  # (n_w, 3, 2)
        self._lo, self._hi = sl[..., 0], sl[..., 1]
        self.network_windows = 0
        self.reused_windows = 0
        self.calls = 0
        n = len(target.windows)
        self.contributions = torch.zeros((n, target.num_targets), dtype=torch.float32, device=target.device)
        if self.active:
            self.contributions[self.active] = self.window_contributions(
                [(i, self.clean[target.windows[i].slices]) for i in self.active], cancel=cancel)
        self.clean_scores = self.contributions.sum(0)

    @property
    def num_windows(self) -> int:
        return len(self.target.windows)

    def window_contributions(self, items: Sequence[tuple[int, torch.Tensor]], *,
                             cancel: CancelFlag | None = None) -> torch.Tensor:
        """(n, K) contributions ``s_w`` of window inputs ``(window index, (*window) tensor)``, batched by
        ``sw_batch_size`` (any mix of windows: they share one size)."""
        t = self.target
        out = torch.zeros((len(items), t.num_targets), dtype=torch.float32, device=t.device)
        bs = t.sw_batch_size
        with torch.no_grad():
            for b0 in range(0, len(items), bs):
                check_cancel(cancel)
                chunk = items[b0 : b0 + bs]
                z = forward_logits(t.network, torch.stack([xw for _, xw in chunk])[:, None].to(t.device), None)
                weights: dict[int, torch.Tensor] = {}
                for j, (i, _) in enumerate(chunk):
                    wt = t.windows[i]
                    if i not in weights:
                        weights[i] = t.window_weights(wt)
                    out[b0 + j] = t._window_scores(z[j : j + 1], wt, weights[i])[0]
                self.network_windows += len(chunk)
        return out

    def windows_meeting(self, changed: torch.Tensor) -> torch.Tensor:
        """(B, n_windows) bool: the windows that a (B, X, Y, Z) or (X, Y, Z) bool mask meets.

        The mask's bounding box picks the candidate windows; each candidate is then checked exactly."""
        m = changed.to(self.target.device).bool()
        m = m[None] if m.ndim == 3 else m
        out = torch.zeros((m.shape[0], self.num_windows), dtype=torch.bool)
        for b in range(m.shape[0]):
            axes = [m[b].any(dim=d) for d in ((1, 2), (0, 2), (0, 1))]
            if not bool(axes[0].any()):
                continue
            lo = np.array([int(a.int().argmax()) for a in axes])
            hi = np.array([len(a) - int(a.flip(0).int().argmax()) for a in axes])
            cand = np.nonzero(((self._lo < hi) & (self._hi > lo)).all(1))[0]
            for i in cand:
                out[b, i] = bool(m[b][self.target.windows[i].slices].any())
        return out

    def scores(self, inputs: torch.Tensor, changed: torch.Tensor | None = None, *,
               cancel: CancelFlag | None = None) -> torch.Tensor:
        """``f_c`` of perturbed copies of the clean input.

        Args:
            inputs: (B, X, Y, Z) tensor.
            changed: optional bool mask, (X, Y, Z) or (B, X, Y, Z), of the voxels that may differ from the
                clean input (it must cover every changed voxel); default: compared with the clean input.

        Returns:
            (B, K) tensor.
        """
        x = inputs.to(self.target.device).float()
        x = x.reshape((-1,) + tuple(self.target.plan.shape))
        meets = self.windows_meeting(x != self.clean[None] if changed is None else changed)
        meets = meets.expand(x.shape[0], -1)
        per = self.contributions[None].repeat(x.shape[0], 1, 1)  # (B, n_w, K)
        todo = [(b, i) for b in range(x.shape[0]) for i in self.active if meets[b, i]]
        self.reused_windows += x.shape[0] * len(self.active) - len(todo)
        bs = self.target.sw_batch_size
        for k in range(0, len(todo), bs):
            chunk = todo[k : k + bs]
            vals = self.window_contributions([(i, x[b][self.target.windows[i].slices]) for b, i in chunk],
                                             cancel=cancel)
            for (b, i), v in zip(chunk, vals):
                per[b, i] = v
        self.calls += x.shape[0]
        return per.sum(1)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.scores(inputs)
