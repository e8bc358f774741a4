"""Quantization schemes: which format each linear layer gets, and the errors a user can hit.

A scheme is data, not code: every mode (``w4a4``, ``w8a8``, ``w4a16``) is one
:class:`LinearFormat` applied by the same pass (``quantize_linears``). Per layer
the scheme resolves to the format plus the number of outlier input columns kept
in float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from planforge.errors import PlanforgeError


class QuantizationError(PlanforgeError):
    """A quantization setting cannot be applied to this model."""


class CalibrationError(PlanforgeError):
    """The calibration text or the model cannot produce calibration statistics."""


@dataclass(frozen=True)
class LinearFormat:
    """How one linear is stored and computed.

    w_bits: signed symmetric weight integers (4 or 8); group: input rows sharing a scale
    (None = one scale per output channel); a_bits: asymmetric per-token activation bits,
    or None for weight-only; outliers: input columns kept in float (count).
    """

    w_bits: int
    a_bits: Optional[int]
    group: Optional[int] = None
    outliers: int = 0


@dataclass(frozen=True)
class Scheme:
    name: str
    base: LinearFormat
    default_outliers: str = "0"
    supports_int8_layers: bool = False


SCHEMES = {
    "w4a4": Scheme("w4a4", LinearFormat(w_bits=4, a_bits=4), default_outliers="0.03", supports_int8_layers=True),
    "w8a8": Scheme("w8a8", LinearFormat(w_bits=8, a_bits=8)),
    "w4a16": Scheme("w4a16", LinearFormat(w_bits=4, a_bits=None, group=128)),
}
INT8 = LinearFormat(w_bits=8, a_bits=8)
WEIGHT_METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class QuantOptions:
    scheme: str = "w4a4"
    outliers: Optional[str] = None  # count ("16") or fraction of in_features ("0.03"); None = scheme default
    int8_layers: tuple[str, ...] = ("down_proj",)
    int8_outliers: str = "0"
    weight_method: str = "rtn"
    clip_search: bool = True
    group: Optional[int] = None  # weight-only schemes: input rows per scale; None = the scheme's (128)

    def settings(self) -> dict:
        data = asdict(self)
        data["int8_layers"] = list(self.int8_layers) if SCHEMES[self.scheme].supports_int8_layers else []
        data["outliers"] = self.outliers if self.outliers is not None else SCHEMES[self.scheme].default_outliers
        data["group"] = self.group or SCHEMES[self.scheme].base.group
        return data

    def validate(self) -> None:
        if self.scheme not in SCHEMES:
            raise QuantizationError(f"unknown scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)} or none.")
        if self.weight_method not in WEIGHT_METHODS:
            raise QuantizationError(f"unknown weight method {self.weight_method!r}; choose rtn or gptq.")
        if self.needs_calibration and SCHEMES[self.scheme].base.a_bits is None and self.outlier_spec != "0":
            raise QuantizationError(f"{self.scheme} is weight-only and keeps no outlier columns; drop --outliers.")
        for spec in (self.outlier_spec, self.int8_outliers):
            parse_count(spec, 1 << 30)
        if self.group is not None:
            if SCHEMES[self.scheme].base.group is None:
                raise QuantizationError(f"--group sets the weight blocks of weight-only schemes; {self.scheme} "
                                        "keeps one scale per output channel (its activations are quantized per "
                                        "token). Drop --group, or use --quant w4a16.")
            if self.group < 16 or self.group & (self.group - 1):
                raise QuantizationError(f"--group {self.group}: give a power of two from 16 (32 is ORT-GenAI's "
                                        "int4 default, 128 planforge's), which every backend's 4-bit kernels take.")

    @property
    def outlier_spec(self) -> str:
        return self.outliers if self.outliers is not None else SCHEMES[self.scheme].default_outliers

    @property
    def needs_calibration(self) -> bool:
        return self.weight_method == "gptq" or self.outlier_spec != "0" or (
            SCHEMES[self.scheme].supports_int8_layers and bool(self.int8_layers) and self.int8_outliers != "0")


def parse_count(spec: str, width: int) -> int:
    """``"16"`` -> 16 columns; ``"0.03"`` -> 3% of ``width`` (rounded); must leave a quantized column."""
    try:
        value = float(spec)
    except ValueError:
        raise QuantizationError(f"outlier count {spec!r} is neither a count (16) nor a fraction (0.03).") from None
    count = int(round(value * width)) if ("." in spec or "e" in spec.lower()) and value < 1 else int(value)
    if value < 0 or count != value and value >= 1:
        raise QuantizationError(f"outlier count {spec!r} must be a whole count >= 0 or a fraction in [0, 1).")
    if count >= width:
        raise QuantizationError(f"{count} outlier columns leave nothing to quantize in a layer {width} wide; "
                                f"use fewer than {width} (or a fraction such as 0.03).")
    return count


def format_for(options: QuantOptions, role: str, in_features: int) -> LinearFormat:
    """The format of one linear (by its canonical role) under ``options``."""
    scheme = SCHEMES[options.scheme]
    if scheme.supports_int8_layers and role in options.int8_layers:
        return replace(INT8, outliers=parse_count(options.int8_outliers, in_features))
    outliers = parse_count(options.outlier_spec, in_features)
    if scheme.base.w_bits == 4 and outliers and (in_features - outliers) % 2 and outliers + 1 < in_features:
        outliers += 1  # an even number of 4-bit columns packs into whole bytes (the GEMM plugin needs it)
    group = options.group if options.group is not None and scheme.base.group is not None else scheme.base.group
    return replace(scheme.base, outliers=outliers, group=group)


