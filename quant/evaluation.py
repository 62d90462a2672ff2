"""onnxruntime inference over MNIST: sessions, batched prediction, accuracy figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .errors import ModelError, first_line
from .models import ort_hints

GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int = 1, opt_level: str = "all") -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = GRAPH_OPT_LEVELS[opt_level]
    so.log_severity_level = 3
    return so


# onnxruntime graph optimizers a latency-aware int8 model may ask to disable, recorded in its metadata
# (models.ORT_HINT_KEY). QDQPropagationTransformer moves a QuantizeLinear that follows an fp32 MaxPool in
# front of it, so the pool runs on uint8 in NCHW with a slow generic kernel (0.9 ms vs 0.07 ms at batch 64).
KNOWN_OPTIMIZERS = ("QDQPropagationTransformer",)


def disabled_optimizers(model: bytes) -> list[str]:
    """The optimizers the model's metadata asks to disable (only known names are honoured)."""
    return [o for o in ort_hints(model) if o in KNOWN_OPTIMIZERS]


def make_session(model: bytes, threads: int = 1, opt_level: str = "all", name: str = "model",
                 disabled: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session from serialized model bytes (honouring the model's optimizer hint
    unless ``disabled`` is given)."""
    dis = disabled_optimizers(model) if disabled is None else disabled
    try:
        return ort.InferenceSession(model, sess_options=session_options(threads, opt_level), providers=["CPUExecutionProvider"],
                                    disabled_optimizers=dis)
    except Exception as e:
        msg = first_line(e)
        raise ModelError(f"{name}: onnxruntime cannot load it: {msg}") from None


def predict(sess: ort.InferenceSession, x: np.ndarray, input_name: str, batch_size: int = 1) -> np.ndarray:
    """Run ``x`` through the session in batches; returns the stacked [N, 10] float32 outputs."""
    outs = []
    run = sess.run
    for i in range(0, len(x), batch_size):
        outs.append(run(None, {input_name: x[i:i + batch_size]})[0])
    y = np.concatenate(outs, axis=0).astype(np.float32, copy=False)
    return y.reshape(len(x), -1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


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
        sess = make_session(model_bytes, self.threads, name=name)
        return predict(sess, self.x, self.input_name, self.batch_size)

    def __call__(self, model_bytes: bytes, name: str = "model") -> float:
        return accuracy(self.outputs(model_bytes, name), self.labels)
