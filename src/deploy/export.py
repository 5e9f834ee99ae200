"""--mode export: a trained checkpoint as one ONNX or TorchScript file that carries its preprocessing.

The file holds the whole scoring graph, normalised image -> class probabilities per zone, so a
deployment never re-implements the loss's reading of the logits (softmax or ordinal). Before the
file is written, its outputs are compared with PyTorch's on sample inputs of three batch sizes (which
also proves the batch dimension is dynamic); a mismatch is an error and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.config.schema import Config
from src.data.zones import ZONES
from src.deploy.metadata import INPUT_NAMES, METADATA_KEY, OUTPUT_NAME, describe_model
from src.engine.probabilities import probabilities_for
from src.evaluation.calibration import fitted_tta
from src.models.factory import load_trained_model
from src.utils.errors import ExportError, first_line
from src.utils.io import atomic_write_with
from src.utils.logging import logger

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format -> default file suffix
# Opset 20 is the newest the dynamo exporter emits without down-conversion for every op these models
# use; onnxruntime has run it since 1.17 and the installed one supports up to opset 23.
ONNX_OPSET = 20
TOLERANCE = 1e-4  # largest absolute difference in any class probability
# The first batch is the one exported (not 1: torch.export would specialise a batch of 1 to a constant);
# the others prove the batch dimension is dynamic, single images included.
SAMPLE_BATCH_SIZES = (2, 1, 3)


class ScoringModel(nn.Module):
    """A trained CSIModel followed by its loss's logits -> probabilities mapping."""

    def __init__(self, model: nn.Module, probabilities: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.probabilities = probabilities

    def forward(self, image: torch.Tensor, zone_masks: torch.Tensor | None = None) -> torch.Tensor:
        inputs = image if zone_masks is None else torch.cat([image, zone_masks], dim=1)
        return self.probabilities(self.model(inputs))


Inputs = tuple[torch.Tensor, ...]  # the image, and the zone masks of a model that reads them


def sample_inputs(image_size: int, seed: int = 0, masks: bool = False) -> list[Inputs]:
    """Normalised-looking random images (and, with `masks`, zone masks cut from random zone maps), one
    batch per size in SAMPLE_BATCH_SIZES."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for n in SAMPLE_BATCH_SIZES:
        image = torch.randn(n, 1, image_size, image_size, generator=generator)
        maps = torch.randint(0, len(ZONES) + 1, (n, 1, image_size, image_size), generator=generator)
        zone_masks = (maps == torch.arange(1, len(ZONES) + 1)[None, :, None, None]).float()
        batches.append((image, zone_masks) if masks else (image,))
    return batches


def _onnx_bytes(model: nn.Module, example: Inputs, metadata: str) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's own progress and deprecation chatter
        program = torch.onnx.export(model, example, dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=list(INPUT_NAMES[:len(example)]), output_names=[OUTPUT_NAME],
                                    dynamic_shapes=tuple({0: batch} for _ in example), verbose=False)
    program.model.metadata_props[METADATA_KEY] = metadata
    return program.model_proto.SerializeToString()


def _onnx_runner(data: bytes) -> Callable[[Inputs], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {name: t.numpy() for name, t in zip(INPUT_NAMES, x)})[0]


def _torchscript_bytes(model: nn.Module, example: Inputs, metadata: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        # check_trace would re-trace and compare graphs; the ViT encoder's attention takes a fused
        # path whose graph differs between traces though its outputs agree. Parity is checked below.
        traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={f"{METADATA_KEY}.json": metadata})
    return buffer.getvalue()


def _torchscript_runner(data: bytes) -> Callable[[Inputs], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return lambda x: loaded(*x).numpy()


_EXPORTERS = {"onnx": (_onnx_bytes, _onnx_runner), "torchscript": (_torchscript_bytes, _torchscript_runner)}


def largest_difference(model: nn.Module, run_exported: Callable[[Inputs], np.ndarray],
                       inputs: list[Inputs]) -> float:
    """The largest absolute difference between PyTorch's and the exported model's outputs."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            expected = model(*x).numpy()
            got = run_exported(x)
            if got.shape != expected.shape:
                return float("inf")
            worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def write_exported(scoring: nn.Module, fmt: str, image_size: int, metadata: dict, output: Path, what: str) -> float:
    """Export `scoring` as `fmt` to `output` once its outputs match PyTorch's; returns the largest
    difference. `what` names the model in errors; a model whose metadata names a mask input takes
    the zone masks as its second input."""
    to_bytes, runner = _EXPORTERS[fmt]
    inputs = sample_inputs(image_size, masks=metadata.get("mask_input") is not None)
    try:
        data = to_bytes(scoring, inputs[0], json.dumps(metadata))
    except Exception as exc:  # the exporters raise many types; each means this model cannot be exported
        raise ExportError(f"{what} cannot be exported to {fmt} ({first_line(exc)})") from exc
    difference = largest_difference(scoring, runner(data), inputs)
    if not difference <= TOLERANCE:
        raise ExportError(f"{what}: the {fmt} export differs from PyTorch by {difference:.2e} "
                          f"(allowed {TOLERANCE:.0e}); nothing written")
    atomic_write_with(output, lambda handle: handle.write(data))
    logger.info(f"wrote {output} ({len(data) / 2**20:.1f} MiB); largest difference from PyTorch {difference:.1e}")
    return difference


def export_model(cfg: Config, checkpoint: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Export `checkpoint` as `fmt` (onnx|torchscript) to `output` (default: beside the checkpoint)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not allowed: expected one of {', '.join(FORMATS)}")
    checkpoint = Path(checkpoint)
    model, trained_cfg, state = load_trained_model(cfg, checkpoint)
    calibration = state.get("calibration")  # fitted by eval
    if calibration and fitted_tta(calibration) != "none":
        logger.warning(f"{checkpoint}: its temperature was fitted with [Evaluation] tta = {fitted_tta(calibration)}, "
                       "which the exported model does not apply: exported without one (eval with tta = none fits one)")
        calibration = None
    temperature = calibration["temperature"] if calibration else None
    scoring = ScoringModel(model.eval(), probabilities_for(trained_cfg.loss.loss)).eval()
    output = Path(output) if output else checkpoint.with_suffix(FORMATS[fmt])
    logger.info(f"exporting {checkpoint} ({trained_cfg.model.model_arch}) as {fmt}")
    write_exported(scoring, fmt, trained_cfg.data.image_size, describe_model(trained_cfg, temperature), output,
                   f"{checkpoint} ({trained_cfg.model.model_arch} model)")
    return output
