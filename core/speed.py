"""Generation time predicted from this machine's measured runs, and the time-budget chooser.

A prompt's time is its sampler's plus the rest (text encoding, decoding, saving); model loading is
kept out. A *size* is the latent pixels one model call processes: width × height × batch. Per
(model family, size) the sampler's seconds are fitted as

    sampler_s = fixed + per_eval × evaluations(sampler, steps)

``evaluations`` is how often the sampler calls the model for that many steps (euler once a step;
heun, dpm_2, dpmpp_sde and the other two-stage solvers twice): the node layer counts it by running
ComfyUI's own sampler functions with a stand-in model (:func:`evaluations_by_name` when it cannot).
``fixed`` is the sampler call's own cost (conditioning, noise, model patches), ``per_eval`` the
seconds of one model evaluation. The line follows the size's recent runs at their
:data:`QUANTILE` (quantile regression): other work on the machine only ever slows a run down, so
even many slowed-down runs that were not recognised as disturbed cannot drag it. The rest is the
same quantile of the size's rests.

A run that loaded a model (a loader executed in it) or that was the first sampler run of its
process is *cold*, one during which other processes used more than :data:`DISTURBED_SHARE` of the
machine's CPU is *disturbed*: slower for reasons that do not recur, so they stay out of the fit;
the others are *steady*. Until a (family, size) has :data:`ESTIMATE_RUNS` steady runs the
prediction is an estimate and errs long: the size's runs with the cold and disturbed ones and their
loading time, or its steady fit times :data:`ESTIMATE_MARGIN`, whichever is longer; a size never
measured is interpolated in pixels between the family's measured sizes (scaled by pixel count
beyond the largest) times the margin; a family never measured is scaled from another by
:data:`FAMILY_COST`; nothing measured at all gives a conservative default.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .errors import InvalidRequest
from .metrics import GenerationRecord, node_kind
from .presets import HEADROOM, TIER_LABELS, TIERS_BEST_FIRST, Family, Quality, SamplerPreset, Tier

#: Model evaluations of a sampler over a number of steps.
Evaluations = Callable[[str, int], float]

#: Relative cost of one model evaluation per megapixel, to carry a measurement of one family over.
FAMILY_COST: Mapping[Family, float] = MappingProxyType(
    {Family.SD15: 1.0, Family.GENERIC: 1.5, Family.SDXL: 2.5, Family.FLUX: 6.0}
)
#: Conservative defaults before anything was measured on this machine (a slow GPU).
DEFAULT_S_PER_STEP_MP = 1.0  # per model evaluation and megapixel, SD1.5; other families by FAMILY_COST
DEFAULT_OVERHEAD_S = 5.0
#: Steady runs of a (family, size) before its prediction is no longer an estimate.
ESTIMATE_RUNS = 5
#: How much longer an estimate from other sizes or families is made, to err on the long side.
ESTIMATE_MARGIN = 1.25
#: A run during which other processes used more than this share of the machine's CPU is disturbed.
DISTURBED_SHARE = 0.25
#: Measurements older than this many (newest first) are ignored by the speed model.
MAX_SAMPLES = 200
#: Newest runs of one size a fit uses (the fit tries every pair of them).
PAIR_SAMPLES = 40
#: The quantile of a size's runs the fit follows. Other work on the machine only ever makes a run
#: slower, so a low quantile finds the undisturbed time even when half of the runs were disturbed;
#: without disturbance it is below the median by about half the run-to-run spread.
QUANTILE = 0.3

#: Names (prefixes) of ComfyUI's two-stage solvers: two model calls a step, one on the last.
_TWO_STAGE = ("heun", "dpm_2", "dpmpp_2s", "dpmpp_sde", "exp_heun_2", "seeds_2", "sa_solver_pece")


def evaluations_by_name(sampler: str, steps: int) -> float:
    """Model evaluations of ComfyUI's ``sampler`` over ``steps``, from its name.

    The fallback when the node layer cannot count them (no ComfyUI, a sampler it cannot run): the
    k-diffusion naming says how many stages a step has (``dpmpp_2m_sde_heun`` is a multistep
    solver, one call a step; ``heunpp2`` up to three; ``dpm_adaptive`` chooses its own, counted as
    two).
    """
    steps = max(1, steps)
    if sampler.startswith(("dpmpp_2m", "dpmpp_3m")):
        return float(steps)
    if sampler.startswith("heunpp2"):
        return max(1.0, 3.0 * steps - 3)
    if sampler.startswith("seeds_3"):
        return max(1.0, 3.0 * steps - 2)
    if sampler.startswith(_TWO_STAGE) or sampler == "dpm_adaptive":
        return max(1.0, 2.0 * steps - 1)
    return float(steps)


def size_key(width: int, height: int, batch: int = 1) -> int:
    """The size class of ``batch`` ``width × height`` latents: pixel counts within about 4 % share one."""
    return round(math.log2(max(1, width * height * batch)) * 16)


@dataclass(frozen=True)
class SpeedSample:
    """One finished generation: its sampler's time for its steps, sampler and size, and the rest."""

    family: Family
    width: int
    height: int
    steps: int
    sampler_s: float
    wall_s: float
    sampler: str = ""
    batch: int = 1
    load_s: float = 0.0  # model loading in the same prompt
    cold: bool = False  # loaded a model, or the first sampler run of its process
    disturbed: bool = False  # other processes used much of the machine's CPU meanwhile

    @property
    def steady(self) -> bool:
        """Neither cold nor disturbed: what the fit learns from."""
        return not (self.cold or self.disturbed)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def s_per_step_mp(self) -> float:
        return self.sampler_s / self.steps / self.megapixels / max(1, self.batch)

    @property
    def overhead_s(self) -> float:
        """The rest of the prompt: text encoding, decoding, saving (not model loading)."""
        return max(0.0, self.wall_s - self.sampler_s - self.load_s)


def speed_samples(records: Iterable[GenerationRecord]) -> list[SpeedSample]:
    """What the speed model learns from performance records: successful runs of a known family,
    size and step count whose sampler ran.

    ``load_s`` is the time of the loader nodes that ran; ``cold``: a loader ran in the prompt (its
    sampler moved or patched freshly loaded weights) or it was the first sampler run of its process;
    ``disturbed``: other processes used more than :data:`DISTURBED_SHARE` of the CPU meanwhile.
    """
    out = []
    for r in records:
        if r.status != "success" or not (r.family and r.width and r.height and r.steps):
            continue
        try:
            family = Family(r.family)
        except ValueError:
            continue
        sampler_s = r.seconds_of("sampler")
        if sampler_s > 0:
            cold = r.cold or any(not n.cached and node_kind(n.class_type) == "load" for n in r.nodes)
            disturbed = r.foreign_cpu is not None and r.foreign_cpu > DISTURBED_SHARE
            sampler, batch, load_s = r.sampler or "", r.batch or 1, r.seconds_of("load")
            out.append(SpeedSample(family, r.width, r.height, r.steps, sampler_s, r.wall_s, sampler=sampler,
                                   batch=batch, load_s=load_s, cold=cold, disturbed=disturbed))  # fmt: skip
    return out


@dataclass(frozen=True)
class Prediction:
    seconds: float  # the whole prompt
    sampler_s: float  # its sampler
    estimating: bool  # fewer than ESTIMATE_RUNS steady runs of this family and size: errs long
    basis: str  # how it was computed, for the "why"


def _quantile(values: Iterable[float], q: float = QUANTILE) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of ys over xs (xs > 0) by quantile regression at :data:`QUANTILE`.

    The line through two of the points that leaves ``QUANTILE`` of them below it (it minimises the
    check loss); without a usable line (one x, a slope or an intercept below 0), the line through 0.
    """
    points = list(zip(xs, ys, strict=True))

    def loss(a: float, b: float) -> float:
        return sum(r * (QUANTILE if r >= 0 else QUANTILE - 1) for r in (y - a - b * x for x, y in points))

    lines = [
        (p[1] - (q[1] - p[1]) / (q[0] - p[0]) * p[0], (q[1] - p[1]) / (q[0] - p[0]))
        for p, q in itertools.combinations(points, 2)
        if abs(q[0] - p[0]) > 1e-9 * max(p[0], q[0])
    ]
    if lines:
        intercept, slope = min(lines, key=lambda line: loss(*line))
        if slope > 0 and intercept >= 0:
            return intercept, slope
    return 0.0, _quantile(y / x for x, y in points)


@dataclass(frozen=True)
class _Fit:
    """The costs fitted to one (family, size)."""

    fixed: float
    per_eval: float
    rest: float
    megapixels: float  # per model call (× batch)

    def scaled(self, megapixels: float) -> _Fit:
        """This size's costs carried to ``megapixels``: per pixel above it, unchanged below it."""
        f = max(1.0, megapixels / self.megapixels)
        return _Fit(self.fixed, self.per_eval * f, self.rest * f, megapixels)

    def towards(self, other: _Fit, megapixels: float) -> _Fit:
        """Linear in pixel count between this size and ``other``."""
        f = (megapixels - self.megapixels) / (other.megapixels - self.megapixels)
        return _Fit(
            self.fixed + f * (other.fixed - self.fixed),
            self.per_eval + f * (other.per_eval - self.per_eval),
            self.rest + f * (other.rest - self.rest),
            megapixels,
        )

    def predict(self, evaluations: float, margin: float, estimating: bool, basis: str) -> Prediction:
        sampler_s = (self.fixed + self.per_eval * evaluations) * margin
        return Prediction(sampler_s + self.rest * margin, sampler_s, estimating, basis)


class SpeedModel:
    """Sampler and rest-of-prompt seconds per (family, size), from measured generations."""

    def __init__(
        self, samples: Iterable[SpeedSample], evaluations: Evaluations = evaluations_by_name
    ) -> None:
        self.samples = [
            s for s in samples if s.steps > 0 and s.sampler_s > 0 and s.width > 0 and s.height > 0
        ][:MAX_SAMPLES]
        self.evaluations = evaluations
        self._sizes: dict[Family, dict[int, list[SpeedSample]]] = {}
        for s in self.samples:
            key = size_key(s.width, s.height, s.batch)
            self._sizes.setdefault(s.family, {}).setdefault(key, []).append(s)
        self._fits: dict[tuple[Family, int, bool], _Fit] = {}

    def steady_runs(self, family: Family, width: int, height: int, batch: int = 1) -> int:
        runs = self._sizes.get(family, {}).get(size_key(width, height, batch), [])
        return sum(1 for s in runs if s.steady)

    def predict(
        self, family: Family, width: int, height: int, steps: int, sampler: str = "", batch: int = 1
    ) -> Prediction:
        """Seconds of ``batch`` ``width × height`` images in ``steps`` steps of ``sampler``.

        Without ``sampler``, one model evaluation a step.
        """
        batch = max(1, batch)
        evals = self._evaluations(sampler, steps)
        key, mp = size_key(width, height, batch), width * height * batch / 1e6
        size = f"{width}×{height}" + (f"×{batch}" if batch > 1 else "")
        runs = self._sizes.get(family, {}).get(key, [])
        steady = sum(1 for s in runs if s.steady)
        if steady >= ESTIMATE_RUNS:
            basis = f"measured {steady} {family.value} runs at {size}"
            return self._fit(family, key, steady=True).predict(evals, 1.0, False, basis)
        estimate = f"estimating ({steady} of {ESTIMATE_RUNS} steady runs)"
        if runs:
            # the size's runs with the cold and disturbed ones and their loading, or its steady fit
            # with a margin
            basis = f"{estimate}: measured {len(runs)} {family.value} run(s) at {size}, conservatively"
            pred = self._fit(family, key, steady=False).predict(evals, 1.0, True, basis)
            if steady:
                fit = self._fit(family, key, steady=True)
                pred = max(pred, fit.predict(evals, ESTIMATE_MARGIN, True, basis), key=lambda p: p.seconds)
            return pred
        if family in self._sizes:
            fit, how = self._across_sizes(family, mp)
            return fit.predict(evals, ESTIMATE_MARGIN, True, f"{estimate} at {size}: {how}")
        if self.samples:
            other = max(self._sizes, key=lambda f: sum(len(v) for v in self._sizes[f].values()))
            fit, how = self._across_sizes(other, mp)
            factor = FAMILY_COST[family] / FAMILY_COST[other]
            fit = _Fit(fit.fixed * factor, fit.per_eval * factor, fit.rest, mp)
            basis = f"{estimate}: no {family.value} run measured; {other.value} {how}, scaled by family cost"
            return fit.predict(evals, ESTIMATE_MARGIN, True, basis)
        fit = _Fit(0.0, DEFAULT_S_PER_STEP_MP * FAMILY_COST[family] * mp, DEFAULT_OVERHEAD_S, mp)
        return fit.predict(evals, 1.0, True, "no run measured on this machine yet: conservative default")

    def _evaluations(self, sampler: str, steps: int) -> float:
        return max(1.0, float(self.evaluations(sampler, steps))) if sampler else float(max(1, steps))

    def _across_sizes(self, family: Family, mp: float) -> tuple[_Fit, str]:
        """The family's measured sizes carried to ``mp`` megapixels (per model call), and how."""
        sizes = self._sizes[family]
        points = sorted(
            (self._fit(family, key, steady=any(s.steady for s in runs)) for key, runs in sizes.items()),
            key=lambda f: f.megapixels,
        )
        same = [p for p in points if abs(p.megapixels - mp) <= 0.03 * mp]
        if same:
            return same[0], f"from measured runs of {_pixels(same[0])}"
        below = [p for p in points if p.megapixels <= mp]
        above = [p for p in points if p.megapixels > mp]
        if below and above:
            lo, hi = below[-1], above[0]
            return lo.towards(
                hi, mp
            ), f"interpolated between measured sizes of {_pixels(lo)} and {_pixels(hi)}"
        near = below[-1] if below else above[0]
        how = "scaled by pixel count" if below else "as large (smaller ones are not faster by much)"
        return near.scaled(mp), f"from measured runs of {_pixels(near)}, {how}"

    def _fit(self, family: Family, key: int, *, steady: bool) -> _Fit:
        """The fit of one size's steady runs (else of all of them, their loading included)."""
        cached = self._fits.get((family, key, steady))
        if cached is not None:
            return cached
        runs = [s for s in self._sizes[family][key] if s.steady or not steady][:PAIR_SAMPLES]
        fixed, per_eval = _line(
            [self._evaluations(s.sampler, s.steps) for s in runs], [s.sampler_s for s in runs]
        )
        rest = _quantile(max(0.0, s.wall_s - s.sampler_s - (s.load_s if steady else 0.0)) for s in runs)
        fit = _Fit(fixed, per_eval, rest, statistics.median(s.megapixels * s.batch for s in runs))
        self._fits[(family, key, steady)] = fit
        return fit


def _pixels(fit: _Fit) -> str:
    """A size for the reason text: the side of the square with its pixel count."""
    return f"~{round(math.sqrt(fit.megapixels * 1e6))}²"


# ------------------------------------------------------------------------------------------------
# The time-budget chooser.


@dataclass(frozen=True)
class Choice:
    tier: Tier
    preset: SamplerPreset
    prediction: Prediction
    reason: str

    @property
    def predicted_s(self) -> float:
        return self.prediction.seconds


def choose(
    tiers: Mapping[Tier, SamplerPreset],
    family: Family,
    budget_s: float,
    quality: Quality,
    speed: SpeedModel,
    *,
    steps_override: int | None = None,
    batch: int = 1,
) -> Choice:
    """The best tier whose predicted time fits ``budget_s`` times the preference's headroom.

    When nothing fits, the fastest tier, with a reason saying it exceeds the budget.

    Raises:
        InvalidRequest: a non-positive or non-finite budget.
    """
    if not math.isfinite(budget_s) or budget_s <= 0:
        raise InvalidRequest("time_budget_seconds must be a positive number")
    allowed = budget_s * HEADROOM[quality]
    predictions: dict[Tier, Prediction] = {}
    for tier in TIERS_BEST_FIRST:
        p = tiers[tier]
        steps = steps_override or p.steps
        predictions[tier] = pred = speed.predict(family, p.width, p.height, steps, p.sampler, batch)
        if pred.seconds <= allowed:
            return Choice(
                tier,
                p,
                pred,
                f"{TIER_LABELS[tier]}: predicted {pred.seconds:.1f} s fits {allowed:.1f} s "
                f"({quality.value} keeps {100 - HEADROOM[quality] * 100:.0f}% of {budget_s:g} s spare); "
                f"{pred.basis}",
            )
    fastest = min(predictions, key=lambda t: (predictions[t].seconds, -TIERS_BEST_FIRST.index(t)))
    pred = predictions[fastest]
    return Choice(
        fastest,
        tiers[fastest],
        pred,
        f"no tier fits {allowed:.1f} s: {TIER_LABELS[fastest]} is the fastest at a predicted "
        f"{pred.seconds:.1f} s; {pred.basis}",
    )
