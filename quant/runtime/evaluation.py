"""onnxruntime inference over MNIST: batched prediction, accuracy figures, the rewrite output check (the
sessions come from :mod:`quant.runtime.sessions`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from quant.errors import InputError, ModelError, QuantError, RunError, first_line
from quant.runtime import sessions


def predict(sess: ort.InferenceSession, x: np.ndarray, input_name: str, batch_size: int = 1, name: str = "model") -> np.ndarray:
    """Run ``x`` through the session in batches; returns the stacked [N, 10] float32 outputs. RunError
    (exit 4) naming the model when onnxruntime fails running it; ModelError when its output has no row per
    image. A model with a fixed batch larger than the images left gets its last batch padded with copies of
    the last image (10,000 test images at a fixed batch of 64 end in a batch of 16), whose rows are dropped."""
    outs = []
    run = sess.run
    dims = sess.get_inputs()[0].shape
    fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 1 else None
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            n = len(xb)
            if fixed and n < fixed:
                xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
            y = np.asarray(run(None, {input_name: xb})[0])
            if len(xb) > 1 and (y.ndim == 0 or y.shape[0] != len(xb)):
                raise ModelError(f"{name}: its output has shape {list(y.shape)} for a batch of {len(xb)} images; expected one row "
                                 "per image (run it at batch 1: evaluation.batch_size: 1)")
            outs.append(y.reshape(len(xb), -1)[:n])
    except QuantError:  # stop.RunTimeout, an output without a row per image: said as it is
        raise
    except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException: the model, not our code
        detail = first_line(e)
        raise RunError(f"{name}: onnxruntime loads it but fails running it: {detail}", detail) from None
    y = np.concatenate(outs, axis=0).astype(np.float32, copy=False)
    return y.reshape(len(x), -1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


CHANCE_LIMIT = 0.20  # 10 classes: chance is 10 %; an fp32 baseline below 20 % means its inputs are wrong, not the model


def require_above_chance(acc: float, path: str, preprocessing: dict, md5_checked: bool) -> None:
    """Stop (exit 4) when the fp32 baseline scores near chance on the configured data: shifted labels,
    wrong files or a wrong preprocessing would make every comparison against it meaningless (an int8
    model at 0.1 % would pass a gate against an fp32 model at 0.1 %)."""
    if acc < CHANCE_LIMIT:
        hint = "the MNIST files (md5 checks are off: dataset.verify_md5)" if not md5_checked else "the MNIST folder"
        raise InputError(f"{path}: fp32 top-1 {acc:.2%} on the test set is near chance level (10 %); the labels or images, or the "
                         f"preprocessing {preprocessing}, do not match this model: check {hint} and the config's preprocessing")


def effective_batch(fixed_batch: int | None, requested: int) -> int:
    """A model whose batch dimension is fixed runs at that batch (1 for the zoo's MNIST)."""
    return fixed_batch if fixed_batch else requested


@dataclass
class Evaluator:
    """Top-1 accuracy of a serialized model over preprocessed images (used as INC's eval_func)."""

    x: np.ndarray
    labels: np.ndarray
    input_name: str
    batch_size: int = 1
    threads: int = 1

    def outputs(self, model_bytes: bytes, name: str = "model") -> np.ndarray:
        sess = sessions.make_session(model_bytes, self.threads, name=name)
        return predict(sess, self.x, self.input_name, self.batch_size, name)

    def __call__(self, model_bytes: bytes, name: str = "model") -> float:
        return accuracy(self.outputs(model_bytes, name), self.labels)


def tied_top1(outputs: np.ndarray) -> int:
    """Images whose two largest outputs are exactly equal (their top-1 depends on the tie rule)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return 0
    top2 = np.sort(outputs, axis=1)[:, -2:]
    return int(np.sum(top2[:, 0] == top2[:, 1]))


# how far a rewritten model's outputs may move from the original's: ATOL + RTOL * max|reference|
ATOL, RTOL = 1e-5, 1e-6


def check_same_outputs(reference: bytes, candidate: bytes, x: np.ndarray, input_name: str, batch: int, path: str = "model",
                       hint: str = "") -> float:
    """Run ``x`` image by image through ``reference`` and in batches of ``batch`` through
    ``candidate``; raise ModelError unless the outputs agree within ``ATOL + RTOL * max|reference|``
    (rewrites may change float summation order, which moves the last bits), or when the candidate fails
    to run (e.g. a Reshape to the old fixed batch that the batch rewrite cannot see, inside an If body).
    ``hint`` ends that message. Returns the largest difference."""
    ref = predict(sessions.make_session(reference, name=path), x, input_name, 1, path)
    try:
        got = predict(sessions.make_session(candidate, name=path), x, input_name, batch, path)
    except RunError as e:  # the original runs, the rewritten one does not
        raise ModelError(f"{path}: the rewritten model fails at batch {batch} where the original runs: {e.detail}"
                         + (f" ({hint})" if hint else "")) from None
    diff = float(np.max(np.abs(ref - got))) if len(x) else 0.0
    limit = ATOL + RTOL * (float(np.max(np.abs(ref))) if len(x) else 0.0)
    if not diff <= limit:
        raise ModelError(f"{path}: the rewritten model's outputs differ from the original by {diff:g} (> {limit:g})"
                         + (f" ({hint})" if hint else ""))
    return diff
