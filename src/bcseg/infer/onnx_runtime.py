"""Inference without TensorFlow: bcseg models exported to ONNX and run by ONNX Runtime.

``bcseg export-onnx RUN`` converts a run's ``model_best.keras`` (in float32, as
inference always uses it) to ``model_best.onnx`` beside it, through Keras's own
``model.export(format="onnx")`` (which uses ``tf2onnx``; needs TensorFlow, and the
``export`` extra). The file records the model's input-size divisor in its metadata,
so nothing else is needed to run it.

``bcseg predict --runtime onnx --model RUN`` then runs that file with ONNX Runtime
(the ``onnx`` extra) through the very same :func:`bcseg.infer.predict.predict_volume`:
the same normalisation, fitting to the training square, padding, sliding windows,
TTA, threshold and post-processing, from the run's ``inference.json``. Only the
network call differs, so masks match TensorFlow's (see ``tests/test_onnx_runtime.py``).
Neither this module nor the prediction path imports TensorFlow or Keras.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from bcseg import outputs
from bcseg.data.io import not_a_file
from bcseg.errors import ModelError, UsageError
from bcseg.learn.saved import ModelSpec
from bcseg.rundir import (MODEL_FILE, SETTINGS_FILE, InferenceSettings, check_model_file, find_members,
                          folder_model, model_settings, read_settings, weights_digest)

ONNX_FILE = "model_best.onnx"
DIVISOR_KEY = "bcseg.divisor"
WEIGHTS_KEY = "bcseg.keras_weights"  # the digest of the .keras weights it was exported from
EXPORT_HINT = "pip install 'bcseg[export]' (tf2onnx and onnx, beside TensorFlow)"
RUNTIME_HINT = "pip install onnxruntime (or 'bcseg[onnx]')"


def export_onnx(model_path: str | Path, out: str | Path | None = None, force: bool = False) -> Path:
    """Export a trained Keras model to an ONNX file that :class:`OnnxModel` runs.

    Parameters
    ----------
    model_path : str or Path
        A training run folder or a ``.keras`` file (see :func:`bcseg.rundir.load_run`).
    out : str or Path, optional
        The ONNX file; default ``model_best.onnx`` in the run folder (or the
        ``.keras`` file's name with ``.onnx``), where ``--runtime onnx`` finds it.
    force : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.
    """
    from bcseg.atomic import atomic_path
    from bcseg.learn.saved import load_model, model_spec
    from bcseg.rundir import load_run

    files = load_run(model_path)[0]
    if len(files) > 1:  # exporting the first alone would pass one member off as the whole
        raise ModelError(model_path, _ENSEMBLE_REFUSAL.format(n=len(files), first=files[0]))
    model_file = files[0]
    out = Path(out) if out else model_file.with_suffix(".onnx")
    inputs = [model_path, model_file]
    _check_out(out, force, inputs)
    try:
        import onnx
        import tf2onnx  # noqa: F401  (Keras's exporter imports it; fail early and clearly)
    except ImportError as exc:
        raise ModelError(model_file, f"exporting to ONNX needs {exc.name}: {EXPORT_HINT}") from None
    import keras

    model = load_model(model_file)
    spec = model_spec(model)
    signature = [keras.InputSpec(shape=(None, *spec.fixed, spec.channels), dtype="float32")]
    with outputs.claim(out.parent, "export-onnx"):
        _check_out(out, force, inputs)  # again, now that no other run writes there
        with atomic_path(out) as tmp, warnings.catch_warnings():
            # Keras patches tf2onnx for NumPy 2 by probing np.object, which warns.
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(tmp), format="onnx", input_signature=signature, verbose=False)
            proto = onnx.load(str(tmp))
            entry = proto.metadata_props.add()
            entry.key, entry.value = DIVISOR_KEY, str(spec.divisor)
            digest = weights_digest(model_file)
            if digest is not None:
                entry = proto.metadata_props.add()
                entry.key, entry.value = WEIGHTS_KEY, digest
            onnx.save(proto, str(tmp))
    return out


def _check_out(out: Path, force: bool, inputs: list) -> None:
    """The ONNX file may be written: an ``.onnx`` name in a folder that can hold it, and
    no file but an earlier export's replaced (never the model, never a dataset's file)."""
    # first: a path too long for the system fails any look at it; never among a dataset's files
    outputs.check_output_folder(out.parent, command="export-onnx")
    if out.is_dir() or not out.name:
        raise UsageError(out, "is a folder; --out names the .onnx file to write")
    if out.suffix.lower() != ".onnx":
        raise UsageError(out, "does not end in .onnx; --out names the ONNX file to write")
    outputs.check_not_bookkeeping(out)
    outputs.check_replaceable([out], force, command="export-onnx", inputs=inputs)
    # beside its own run's model is fine (train's --force replaces the export with the run);
    # into a phantom's dataset or an ensemble's folder it kept their --force from replacing it
    outputs.refuse_whole_result(out.parent, "export-onnx")


class OnnxModel:
    """An exported bcseg model run by ONNX Runtime, callable by ``predict_volume``.

    It offers what :func:`bcseg.infer.predict.predict_volume` asks of a model:
    ``predict_on_batch`` on a float32 ``(N, *spatial, C)`` batch, and ``spec`` (the
    input contract that :func:`bcseg.learn.saved.model_spec` returns for it).

    Parameters
    ----------
    path : str or Path
        An ONNX file written by :func:`export_onnx`.
    threads : int, optional
        ONNX Runtime's intra-op threads; default: one per core.
    exported_from : Path, optional
        The ``.keras`` file whose settings it runs with (:func:`keras_source`): an
        export of other weights is refused, since its masks would not be that model's.
    """

    def __init__(self, path: str | Path, threads: int | None = None, exported_from: Path | None = None):
        path = Path(path)
        self.path = path  # its file is its weights (segment.made_with)
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(path, f"the onnx runtime needs ONNX Runtime: {RUNTIME_HINT}") from None
        if not path.is_file():
            raise ModelError(path, "ONNX model not found; write it with: bcseg export-onnx RUN")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # fatal only: keep stderr to bcseg's own lines (an error of a run is raised, and
        # said once, by bcseg: see predict_on_batch)
        options.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/... classes
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(path, f"cannot load the ONNX model ({reason})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if DIVISOR_KEY not in meta or len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(path, "is not a bcseg model exported by 'bcseg export-onnx'")
        shape = inputs[0].shape  # symbolic sizes are strings or None
        if len(shape) not in (4, 5) or not isinstance(shape[-1], int):
            raise ModelError(path, f"has input shape {shape}; bcseg models take (N, H, W, C) "
                             "or (N, Z, H, W, C)")
        recorded = meta.get(WEIGHTS_KEY)  # exports before it was recorded cannot be checked
        if recorded and exported_from is not None and weights_digest(exported_from) not in (None, recorded):
            raise ModelError(path, f"was exported from another model than {exported_from} (their weights "
                             f"differ), whose settings it would run with; export that model again: "
                             f"bcseg export-onnx {exported_from} --out {path} --force")
        # The divisor is read from text anyone can edit: "abc" or "1e9" failed with a bare
        # ValueError, "0" with ZeroDivisionError (exit 1, naming no file), and a negative
        # one padded to negative sizes.
        divisor = meta[DIVISOR_KEY]
        if not (divisor.isascii() and divisor.isdigit() and int(divisor) >= 1):
            raise ModelError(path, f"records the size divisor {divisor!r} ({DIVISOR_KEY} in its "
                             "metadata), not a positive whole number; export it again: "
                             "bcseg export-onnx RUN --force")
        self.input_name = inputs[0].name
        self.spec = ModelSpec(len(shape) - 2, shape[-1],
                              tuple(n if isinstance(n, int) else None for n in shape[1:-1]),
                              int(divisor))

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 batch ``(N, *spatial, C)``."""
        try:
            out = self.session.run(None, {self.input_name: np.asarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # ONNX Runtime's own Fail/InvalidArgument/...: the model's fault
            # (a graph that cannot take the batch its recorded divisor allowed), not the
            # image's; said in one line naming the file rather than as an unexpected error.
            # ONNX Runtime's reason is the advice: re-exporting cures a bad divisor, not memory.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(self.path, f"cannot run on a batch of shape {tuple(x.shape)} "
                             f"({reason})") from None
        # Keras's exporter traces the model on a list of one input; once in a long test
        # session the traced output came back stacked as a list of one, (1, N, ..., 1).
        # The values are the model's (the parity tests compare them with TensorFlow's).
        if out.ndim == x.ndim + 1 and out.shape[0] == 1:
            out = out[0]
        return out


_ENSEMBLE_REFUSAL = ("is an ensemble of {n} models, and an ONNX file holds one; export a member "
                     "on its own (e.g. {first}), or predict with the tensorflow runtime")


def load_onnx_run(path: str | Path) -> tuple[list[Path], InferenceSettings]:
    """The ONNX file and inference settings of a run folder, or of a ``.onnx`` file.

    The settings come from the ``inference.json`` beside the file, as for a
    ``.keras`` model (:func:`bcseg.rundir.load_run`). Ensembles are not exported.
    """
    path = given = Path(path)
    if path.is_dir():
        recorded = read_settings(path / SETTINGS_FILE) if (path / SETTINGS_FILE).is_file() else None
        if (recorded is not None and len(recorded.members) > 1) or len(find_members(path)) > 1:
            raise ModelError(path, "is an ensemble of several models, and the onnx runtime runs "
                             "one exported model: predict with the tensorflow runtime, or pass "
                             "--model with one member's exported .onnx file")
        # The export of the folder's model, named as export-onnx names it: model_best.onnx in a
        # run, X.onnx beside a bundled folder's X.keras (looked for as model_best.onnx, the
        # refusal's advice, to export the folder, wrote X.onnx again and again).
        source, onnx_file = folder_model(path), path / ONNX_FILE
        if source is not None and not os.path.lexists(onnx_file):
            onnx_file = source.with_suffix(".onnx")
        check_model_file(onnx_file, "a .onnx file")  # a folder or broken link is no "no file"
        if not onnx_file.is_file():
            raise ModelError(path, f"holds no {onnx_file.name}; write it with: bcseg export-onnx {path}")
        path = onnx_file
    elif not path.is_file():  # a named pipe or a device is named as such, never opened
        raise ModelError(path, not_a_file(path, "a training run folder or a .onnx file")
                         or "model not found; pass a training run folder or a .onnx file")
    elif path.suffix.lower() != ".onnx":
        raise ModelError(path, "is not a .onnx file; export it first with: bcseg export-onnx")
    # As for a .keras model: the settings beside it, checked against the embedded copy
    # of the model it was exported from; a run that has not finished is refused.
    settings = model_settings(path, given_as_file=not given.is_dir(), archive=keras_source(path))
    return [path], settings


def keras_source(onnx_file: Path) -> Path:
    """The ``.keras`` file an ONNX file stands for: ``X.keras`` beside ``X.onnx`` (export-onnx
    writes X.onnx beside X.keras), else its folder's ``model_best.keras``."""
    exported_from = onnx_file.with_suffix(".keras")
    return exported_from if exported_from.is_file() else onnx_file.parent / MODEL_FILE
