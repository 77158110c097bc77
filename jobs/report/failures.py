"""Question 12d: a loss-against-epoch plot for each failure mode, and whether the run really shows it.

Each diagnostics run is compared with a matched reference: of the stage's runs with the baseline's
network and training settings (they may differ in images and epochs), the one that differs from it
in the fewest params, so that each failure changes one thing (else the baseline trained a fixed
number of epochs). It is classified by how its params differ from that reference: a larger model, a
higher momentum, a smaller batch, a higher or lower learning rate. Then the numbers decide whether
it shows its failure, and the report says so either way:

  learning rate too high   the loss diverges (NaN, or ends above where it started), or test accuracy is clearly lower
  learning rate too small  test accuracy clearly lower, the training loss clearly higher: under-trained
  momentum too high        the loss oscillates (rougher than the reference's, or the test loss rises), or diverges
  batch size too small     slower per image (fewer images per second) and a noisier loss, the noise
                           compared over equal windows of images (a logged loss point averages
                           log_every batches: 200 images at batch 2, 3,200 at batch 32, and an
                           average over 16× fewer images is about 4× as noisy from sampling alone)
  large model              the train/test accuracy gap widens over the epochs, beyond the reference's

"Clearly lower" means by more than 2 standard errors of a difference of two single runs measured
on the test set, and at least one point.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jobs.report.curves import Curve, Histories, plot_failure
from jobs.report.md import ARCH_KEYS, cell, pct, section, slug
from jobs.report.roles import Roles
from jobs.report.stats import accuracy_se, mean, number

MODES = (
    ("lr_high", "i. Learning rate too high"),
    ("lr_low", "ii. Learning rate too small"),
    ("momentum_high", "iii. Momentum too high"),
    ("batch_small", "iv. Batch size too small"),
    ("model_large", "v. Overfitting due to a large model"),
)


@dataclass
class Verdict:
    shows: bool
    text: str


def classify(flat: Mapping[str, Any], ref: Mapping[str, Any]) -> str | None:
    """Which failure mode a run's params aim at, compared with the reference run's params."""

    def more(key: str) -> bool:
        a, b = number(flat.get(key)), number(ref.get(key))
        return a is not None and b is not None and a > b

    def less(key: str) -> bool:
        a, b = number(flat.get(key)), number(ref.get(key))
        return a is not None and b is not None and a < b

    # Most specific first: a momentum run may raise the learning rate too (momentum 0.99 shows best
    # at the training grid's lr 0.01), and is still about momentum.
    if any(more(k) for k in ARCH_KEYS if k.endswith("channels") or k == "dense"):
        return "model_large"
    if more("momentum"):
        return "momentum_high"
    if less("batch_size"):
        return "batch_small"
    if more("lr"):
        return "lr_high"
    if less("lr"):
        return "lr_low"
    return None


def rebin(losses: Sequence[float], k: int) -> list[float]:
    """Means of k consecutive loss points (each then covers k times the images)."""
    if k <= 1:
        return list(losses)
    return [mean(losses[i : i + k]) for i in range(0, len(losses) - k + 1, k)]


def roughness(losses: Sequence[float]) -> float | None:
    """Mean step-to-step change of the running loss over the second half, relative to its level."""
    half = [v for v in losses[len(losses) // 2 :] if math.isfinite(v)]
    if len(half) < 3:
        return None
    level = mean(half)
    steps = [abs(b - a) for a, b in itertools.pairwise(half)]
    return mean(steps) / level if level > 0 else None


def diverged(curve: Curve) -> bool:
    losses = curve.losses()
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) < len(losses) or not finite:
        return True
    return finite[-1] >= finite[0]


def first_nan(curve: Curve) -> float | None:
    """Where (in epochs) the training loss was first NaN or infinite; None when it stayed finite."""
    return next((x for x, v in zip(curve.xs(), curve.losses(), strict=True) if not math.isfinite(v)), None)


def rises(curve: Curve) -> int:
    """How many times the test loss went up from one epoch to the next."""
    vals = [v for v in (number(e.get("test_loss")) for e in curve.epochs) if v is not None]
    return sum(1 for a, b in itertools.pairwise(vals) if b > a)


def gaps(curve: Curve) -> list[float]:
    out = []
    for e in curve.epochs:
        train, test = number(e.get("train_acc")), number(e.get("test_acc"))
        if train is not None and test is not None:
            out.append(train - test)
    return out


def judge(mode: str, run: Any, curve: Curve | None, ref: Any, ref_curve: Curve | None, n_test: int | None) -> Verdict:
    r, b = run.result, ref.result
    acc, base = number(r.get("test_accuracy")), number(b.get("test_accuracy"))
    se = accuracy_se(base or 0.88, n_test or 10_000)
    clearly = max(0.01, 2 * math.sqrt(2) * se)
    lower = acc is not None and base is not None and base - acc > clearly
    versus = f"test accuracy {pct(acc)} against the reference's {pct(base)}"
    if acc is not None and base is not None:
        versus += f" ({100 * (acc - base):+.2f} points)"
    diff = f"{100 * (acc - base):+.2f} points" if acc is not None and base is not None else "no figure"
    not_shown = (
        f"Its test accuracy {pct(acc)} is not clearly below the reference's {pct(base)} ({diff}; clearly means by "
        f"more than {100 * clearly:.1f} points, 2 standard errors of a difference measured on this test set)."
    )
    if mode in ("lr_high", "lr_low"):
        bad = curve is not None and diverged(curve)
        if mode == "lr_high" and bad and curve is not None:
            nan_at = first_nan(curve)
            if nan_at is not None:
                after = [v for x, v in zip(curve.xs(), curve.losses(), strict=True) if x >= nan_at]
                stays = "and stayed NaN" if not any(math.isfinite(v) for v in after) else "and came back later"
                return Verdict(
                    True,
                    f"The loss diverges: it overflowed to NaN (not a number) by epoch {nan_at:.2f} of training "
                    f"{stays} (the red crosses along the top of the loss plot); {versus}.",
                )
            return Verdict(True, f"The loss diverges: it ends no lower than it started; {versus}.")
        final = next((v for v in reversed(curve.losses()) if math.isfinite(v)), None) if curve is not None else None
        if mode == "lr_high" and lower and final is not None and abs(final - math.log(10)) < 0.05:
            return Verdict(
                True,
                f"The loss sits at {final:.2f}, the loss of a uniform guess over 10 classes (ln 10 = 2.30): the "
                f"steps are so large that the network learned nothing; {versus}.",
            )
        if lower:
            tl, bl = number(r.get("train_loss")), number(b.get("train_loss"))
            loss = f", training loss {cell(tl)} against {cell(bl)}" if tl is not None and bl is not None else ""
            what = "plateaus clearly worse" if mode == "lr_high" else "is clearly under-trained in the same epochs"
            return Verdict(True, f"The run {what}: {versus}{loss}.")
        return Verdict(False, not_shown)
    if mode == "momentum_high":
        rough = _rough_ratio(curve, ref_curve)
        up = rises(curve) if curve is not None else 0
        signs = []
        if curve is not None and diverged(curve):
            signs.append("the loss diverges")
        if rough is not None and rough >= 1.5:
            signs.append(f"the training loss is {rough:.1f}× as jagged as the reference's over equal image windows")
        if up >= 2 and (ref_curve is None or up > rises(ref_curve)):
            signs.append(f"the test loss rises in {up} epochs")
        if lower:
            signs.append(versus)
        if signs:
            return Verdict(True, "The loss oscillates: " + "; ".join(signs) + ".")
        jagged = f" (it is {rough:.1f}× as jagged as the reference's)" if rough is not None else ""
        return Verdict(False, not_shown + f" Its training loss neither oscillates nor diverges{jagged}.")
    if mode == "batch_small":
        speed, base_speed = number(r.get("images_per_s")), number(b.get("images_per_s"))
        rough = _rough_ratio(curve, ref_curve)
        noisy = (
            f"; over equal windows of images its training loss is {rough:.1f}× as jagged as the reference's"
            if rough is not None
            else "; it logged too few loss points to compare its noise with the reference's over equal windows of images"
        )
        if speed is not None and base_speed is not None and speed < 0.8 * base_speed:  # slower per image
            better = (
                " Its accuracy is not the failure: in the same epochs it makes many more (smaller-batch) updates, "
                "so it can end higher; the cost is time, and a noisier path."
                if acc is not None and base is not None and acc >= base
                else ""
            )
            return Verdict(
                True,
                f"Slower per image: {speed:,.0f} images/s against the reference's {base_speed:,.0f} "
                f"({base_speed / speed:.1f}× the time per image){noisy}; {versus}.{better}",
            )
        return Verdict(
            False, f"This run is not slower per image ({cell(speed)} against {cell(base_speed)} images/s){noisy}."
        )
    if mode == "model_large":
        g = gaps(curve) if curve is not None else []
        bg = gaps(ref_curve) if ref_curve is not None else []
        if len(g) >= 2:
            widened = g[-1] - min(g[: max(1, len(g) // 3)])
            beyond_base = not bg or g[-1] > bg[-1] + clearly
            text = (
                f"The train − test accuracy gap grows from {100 * g[0]:.2f} points after the first epoch to "
                f"{100 * g[-1]:.2f} points after the last"
                + (f" (the reference ends at {100 * bg[-1]:.2f} points)" if bg else "")
            )
            if widened > clearly and beyond_base:
                return Verdict(True, text + f": the model memorises the training images; {versus}.")
            return Verdict(False, text + ": not a clearly widening gap, so this run does not show overfitting.")
        return Verdict(False, "The run recorded no per-epoch accuracies, so its train/test gap cannot be followed.")
    return Verdict(False, not_shown)


def images_per_point(job: Any) -> int | None:
    """How many training images one logged loss point of a train job averages."""
    flat = job.flat_params()
    batch, every = number(flat.get("batch_size")), number(flat.get("log_every", 100))
    return int(batch * every) if batch and every else None


def _rough_ratio(curve: Curve | None, ref: Curve | None) -> float | None:
    """How much more jagged the run's training loss is than the reference's, over equal image windows."""
    if curve is None or ref is None:
        return None
    a_losses, b_losses = curve.losses(), ref.losses()
    ia, ib = curve.history.get("_images_per_point"), ref.history.get("_images_per_point")
    if ia and ib and ia != ib:  # average the finer curve's points into windows of the coarser one's images
        if ia < ib:
            a_losses = rebin(a_losses, round(ib / ia))
        else:
            b_losses = rebin(b_losses, round(ia / ib))
    a, b = roughness(a_losses), roughness(b_losses)
    return a / b if a is not None and b else None


def _differs(flat: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    keys = set(flat) | set(ref)
    return sorted(k for k in keys if k != "seed" and flat.get(k) != ref.get(k) and not isinstance(flat.get(k), dict))


def matched_reference(job: Any, references: Sequence[Any]) -> Any:
    """The reference the run differs from in the fewest params (the first of equals)."""
    flat = job.flat_params()
    return min(references, key=lambda r: len(_differs(flat, r.flat_params())))


def _change(flat: Mapping[str, Any], ref: Mapping[str, Any], with_reference: bool = True) -> str:
    keys = _differs(flat, ref)
    if not with_reference:
        return ", ".join(f"{k} {cell(flat.get(k))}" for k in keys) or "baseline settings"
    return ", ".join(f"{k} {cell(flat.get(k))} (reference {cell(ref.get(k))})" for k in keys) or "baseline settings"


def _curve(label: str, hist: Histories, job: Any) -> Curve | None:
    history, _ = hist.get(job)
    if history is None:
        return None
    return Curve(label, {**history, "_images_per_point": images_per_point(job)})


def q12d(view: Any, roles: Roles, hist: Histories) -> tuple[list[dict[str, Any]], list[str]]:
    runs = [j for s in roles.diagnostics for j in view.jobs(s)]
    if not roles.diagnostics:
        return [], ["12d: the sweep has no `diagnostics` train stage."]
    if not runs:
        return [], [f"12d: no run of `{', '.join(roles.diagnostics)}` has finished."]
    base = roles.baseline or roles.reference
    if base is None:
        return [], ["12d: no baseline to tell what each failure-mode run changed."]
    base_flat = base.flat_params()
    # Runs of the stage with the baseline's network and training settings (on the stage's images and
    # epochs) are the fairest references; each run is matched with the one it differs from least, so
    # that it changes one thing. Without one, the baseline trained a fixed number of epochs.
    in_stage = [j for j in runs if classify(j.flat_params(), base_flat) is None]
    references = in_stage or [roles.reference]
    assert all(r is not None for r in references)
    by_mode: dict[str, list[tuple[Any, Any]]] = {}
    for job in runs:
        if job in references:
            continue
        ref = matched_reference(job, references)
        mode = classify(job.flat_params(), ref.flat_params())
        by_mode.setdefault(mode or "other", []).append((job, ref))
    which = (
        "a run of the same stage with the baseline's network and training settings, on the same images for the "
        "same epochs: of those, the one the run differs from in the fewest settings"
        if in_stage
        else f"the baseline trained a fixed {cell(references[0].params.get('max_epochs'))} epochs"
    )
    intro = (
        f"One run per failure mode, each changing one setting against its reference (grey): {which}. Left: "
        "training loss (line) and test loss (circles) per epoch; right: train (solid) and test (dashed) accuracy "
        "per epoch. Under each plot, what the numbers show."
    )
    out = [section("12d. Loss against epochs in five failure modes", intro)]
    notes = []
    shown = 0
    for mode, title in MODES:
        jobs = by_mode.get(mode, [])
        if not jobs:
            out.append(section(title, "_No diagnostics run changes this setting, so this case is missing._", level=4))
            notes.append(f"12d: no run for '{title}'.")
            continue
        parts, figures = [], []
        for job, ref in jobs:
            ref_flat = ref.flat_params()
            ref_curve = _curve("reference", hist, ref)
            n_test = hist.test_images(ref)
            curve = _curve("this run", hist, job)
            _, why = hist.get(job)
            verdict = judge(mode, job, curve, ref, ref_curve, n_test)
            shown += verdict.shows
            changed = _change(job.flat_params(), ref_flat)
            parts.append(f"Changed against its reference: {changed}.")
            if curve is not None:
                name = f"failure_{mode}_{slug(job.id)}.png"
                short = _change(job.flat_params(), ref_flat, with_reference=False)
                plot_failure(view.figure_path(name), curve, ref_curve, f"{title[title.index(' ') + 1 :]}: {short}")
                figures.append(name)
                parts.append(f"![{title}]({name})")
            else:
                parts.append(f"_No curve: {why}._")
            parts.append(("**Shows it.** " if verdict.shows else "**Does not show it.** ") + verdict.text)
        out.append(section(title, parts, figures, level=4))
    others = by_mode.get("other", [])
    if others:
        out[0]["body"] += "\n\nNot matched to a failure mode: " + ", ".join(j.label for j, _ in others) + "."
    judged = sum(len(by_mode.get(m, [])) for m, _ in MODES)
    out[0]["body"] += f"\n\n{shown} of {judged} run(s) show the failure they were meant to show."
    return out, notes
