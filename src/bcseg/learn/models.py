"""U-Net builders for 2D slices and 3D stacks, in the plain Keras functional API.

One function, :func:`unet`, builds every variant. The model uses built-in Keras
layers only, so a saved ``.keras`` file loads with
``keras.saving.load_model(path, safe_mode=True, compile=False)`` and no custom
objects.

Input sizes must be a multiple of ``2**depth * stem_stride`` along every spatial
axis. :func:`size_divisor` gives that number from the builder's arguments;
:func:`model_divisor` recovers it from a built or loaded model by multiplying the
strides of its downsampling layers (the strided stem convolution and the
``MaxPooling`` layers), so nothing beyond the ``.keras`` file is needed.
"""

from __future__ import annotations

import math

import keras
from keras import layers


NORMS = ("batch", "instance", None)
UPSAMPLES = ("transpose", "linear")


def _layer(kind: str, ndim: int, suffix: str = ""):
    """The Keras layer class ``kind`` (``"Conv"``, ``"MaxPooling"``, ...) for 2D or 3D."""
    return getattr(layers, f"{kind}{ndim}D{suffix}")


def _norm(x, norm: str | None, name: str):
    if norm == "batch":
        # Momentum 0.9 (PyTorch's default) rather than Keras's 0.99: with the short
        # runs and small batches of specimen studies, 0.99 leaves the inference-time
        # statistics far from the training ones and validation Dice collapses.
        return layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if norm == "instance":
        return layers.GroupNormalization(groups=-1, name=f"{name}_in")(x)
    return x


def _conv_norm(x, filters, ndim, norm, name, strides=1):
    """A 3×3 convolution followed by ``norm`` (no bias when normalised)."""
    x = _layer("Conv", ndim)(filters, 3, strides=strides, padding="same",
                             use_bias=norm is None, name=name)(x)
    return _norm(x, norm, name)


def _conv_block(x, filters, ndim, norm, residual, name):
    """Two conv-norm-ReLU steps; with ``residual``, a shortcut is added before the last ReLU."""
    shortcut = x
    x = layers.Activation("relu", name=f"{name}_relu1")(_conv_norm(x, filters, ndim, norm, f"{name}_conv1"))
    x = _conv_norm(x, filters, ndim, norm, f"{name}_conv2")
    if residual:
        if shortcut.shape[-1] != filters:
            shortcut = _layer("Conv", ndim)(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu2")(x)


def _upsample(x, filters, ndim, mode, factor, name):
    """Upsample by ``factor``: a transposed convolution, or UpSampling then a 3×3 conv.

    ``UpSampling2D`` interpolates bilinearly; ``UpSampling3D`` can only repeat voxels,
    and the convolution that follows smooths the result.
    """
    if mode == "transpose":
        return _layer("Conv", ndim, "Transpose")(filters, factor, strides=factor,
                                                 padding="same", name=name)(x)
    extra = {"interpolation": "bilinear"} if ndim == 2 else {}
    x = _layer("UpSampling", ndim)(factor, name=f"{name}_resize", **extra)(x)
    return _layer("Conv", ndim)(filters, 3, padding="same", name=name)(x)


def unet(ndim: int = 2, in_channels: int = 1, base_filters: int = 16, depth: int = 4,
         norm: str | None = "batch", dropout: float = 0.0, residual: bool = False,
         upsample: str = "transpose", decoder_norm_only: bool = False, stem_stride: int = 1,
         max_filters: int | None = None, name: str | None = None) -> keras.Model:
    """Build a U-Net that maps an image to a one-channel tumour probability.

    Parameters
    ----------
    ndim : {2, 3}
        Spatial dimensions: 2 for ``(H, W)`` slices, 3 for ``(Z, H, W)`` stacks.
    in_channels : int
        Channels of the input image.
    base_filters, depth : int
        Filters at the first level (doubled each level down); 2× downsamplings, at least 1.
    norm : {"batch", "instance", None}
        Normalisation after every convolution (``"instance"``: ``GroupNormalization(groups=-1)``).
    dropout : float
        Dropout rate in [0, 1) after the bottleneck block.
    residual : bool
        Add a shortcut (1×1-projected when the width changes) around every two-convolution block.
    upsample : {"transpose", "linear"}
        Decoder upsampling: a 2× transposed convolution, or ``UpSampling`` then a 3×3 convolution.
    decoder_norm_only : bool
        Normalise in the decoder only. The reference study's preset is
        ``base_filters=32, depth=4, upsample="transpose", norm="batch", decoder_norm_only=True``.
    stem_stride : int
        Stride (a power of two) of a first 3×3 convolution that lowers the resolution the
        U-Net runs at; a final upsampling and block restore it. 1: no stem.
    max_filters : int, optional
        Cap on the filters of any level (as nnU-Net caps its deep levels): the deepest
        levels hold most of the weights but see few pixels. None: no cap.
    name : str, optional
        Model name; defaults to ``"unet2d"`` or ``"unet3d"``.

    Returns
    -------
    keras.Model
        Input shape ``(None,)*ndim + (in_channels,)``; output of the same spatial size with
        one sigmoid channel, in float32 even under a mixed-precision policy. Spatial sizes
        must be multiples of ``size_divisor(depth, stem_stride)``.

    Examples
    --------
    >>> model = unet(ndim=2, base_filters=4, depth=2, stem_stride=2)
    >>> model_divisor(model)
    8
    """
    _check_args(ndim, in_channels, base_filters, depth, norm, dropout, residual,
                upsample, decoder_norm_only, stem_stride)
    widths = _widths(base_filters, depth, max_filters)
    enc_norm = None if decoder_norm_only else norm
    inputs = keras.Input(shape=(None,) * ndim + (in_channels,), name="image")
    x = _stem(inputs, base_filters, ndim, enc_norm, stem_stride)
    x, skips = _encoder(x, widths, ndim, enc_norm, residual, dropout)
    x = _decoder(x, skips, widths, ndim, norm, residual, upsample)
    if stem_stride > 1:
        x = _upsample(x, base_filters, ndim, upsample, stem_stride, "stem_up")
        x = _conv_block(x, base_filters, ndim, norm, residual, "stem_dec")
    outputs = _layer("Conv", ndim)(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name=name or f"unet{ndim}d")


def _widths(base_filters: int, depth: int, max_filters: int | None) -> list[int]:
    """Filters of each level, 0 (top) to ``depth`` (the bottleneck), capped at ``max_filters``."""
    if max_filters is not None and (isinstance(max_filters, bool) or not isinstance(max_filters, int)
                                    or max_filters < base_filters):
        raise ValueError(f"max_filters must be an integer >= base_filters, got {max_filters!r}")
    return [min(base_filters * 2**level, max_filters or base_filters * 2**level)
            for level in range(depth + 1)]


def _stem(x, filters: int, ndim: int, norm, stride: int):
    """A strided 3×3 convolution that lowers the resolution the U-Net runs at (none at 1)."""
    if stride == 1:
        return x
    x = _conv_norm(x, filters, ndim, norm, "stem_conv", strides=stride)
    return layers.Activation("relu", name="stem_relu")(x)


def _encoder(x, widths: list[int], ndim: int, norm, residual: bool, dropout: float):
    """The contracting path and the bottleneck; returns its output and the skips by level."""
    skips = []
    for level in range(len(widths) - 1):
        x = _conv_block(x, widths[level], ndim, norm, residual, f"enc{level}")
        skips.append(x)
        x = _layer("MaxPooling", ndim)(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, widths[-1], ndim, norm, residual, "bottleneck")
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    return x, skips


def _decoder(x, skips: list, widths: list[int], ndim: int, norm, residual: bool, upsample: str):
    """The expanding path: upsample, join the level's skip, convolve, up to the top level."""
    for level in reversed(range(len(skips))):
        x = _upsample(x, widths[level], ndim, upsample, 2, f"dec{level}_up")
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _conv_block(x, widths[level], ndim, norm, residual, f"dec{level}")
    return x


def _check_args(ndim, in_channels, base_filters, depth, norm, dropout, residual,
                upsample, decoder_norm_only, stem_stride):
    def positive_int(value, what, minimum=1, maximum=None):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{what} must be an integer from {minimum} to {maximum}, got {value!r}")

    # an int: 2.0 passed "in (2, 3)" and failed building the first layer, naming nothing
    if isinstance(ndim, bool) or not isinstance(ndim, int) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    positive_int(in_channels, "in_channels")
    # The recipe's ranges (bcseg.config.RANGES): beyond them the filters alone fill any
    # memory (depth 20 asks for 16 * 2**20 of them) and TensorFlow's OOM named nothing.
    positive_int(base_filters, "base_filters", maximum=1024)
    positive_int(depth, "depth", maximum=12)
    positive_int(stem_stride, "stem_stride", maximum=16)
    if stem_stride & (stem_stride - 1):
        raise ValueError(f"stem_stride must be a power of two, got {stem_stride}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if upsample not in UPSAMPLES:
        raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
    for flag, what in ((residual, "residual"), (decoder_norm_only, "decoder_norm_only")):
        if not isinstance(flag, bool):
            raise ValueError(f"{what} must be True or False, got {flag!r}")
    if decoder_norm_only and norm is None:
        raise ValueError("decoder_norm_only=True needs a norm ('batch' or 'instance'), got None")


def size_divisor(depth: int, stem_stride: int = 1) -> int:
    """The multiple that every spatial input size must be padded to.

    Parameters
    ----------
    depth, stem_stride : int
        As given to :func:`unet`.

    Returns
    -------
    int
        ``2**depth * stem_stride``.

    Examples
    --------
    >>> size_divisor(4, 2)
    32
    """
    return 2**depth * stem_stride


def unet_options(model_cfg: dict) -> dict:
    """:func:`unet`'s keyword arguments from a recipe's ``[model]`` table (``ndim`` and
    ``in_channels`` left out): one mapping for the model trained and the memory it is
    checked to need (``norm = "none"`` is None, ``max_filters = 0`` no cap)."""
    m = model_cfg
    return {"base_filters": m["base_filters"], "depth": m["depth"],
            "norm": None if m["norm"] == "none" else m["norm"], "dropout": m["dropout"],
            "residual": m["residual"], "upsample": m["upsample"],
            "decoder_norm_only": m["decoder_norm_only"], "stem_stride": m["stem_stride"],
            "max_filters": m["max_filters"] or None}


def activation_values(shape: tuple[int, ...], in_channels: int = 1, base_filters: int = 16,
                      depth: int = 4, norm: str | None = "batch", dropout: float = 0.0,
                      residual: bool = False, upsample: str = "transpose",
                      decoder_norm_only: bool = False, stem_stride: int = 1,
                      max_filters: int | None = None) -> int:
    """Values that the layers of :func:`unet` output for one input of spatial ``shape``.

    Training keeps most of these for the backward pass, so a measured number of bytes
    per value bounds a batch's memory before any model is built
    (:mod:`bcseg.learn.machine`). Counted layer by layer as :func:`unet` builds them
    (a test compares the count with a built model's outputs): the kept maps differ
    with normalisation, shortcuts and the stem, so one count per level (each level's
    feature map, as before) under-counted a normalised residual U-Net 2.4 times more
    than one without either.

    Examples
    --------
    >>> activation_values((32, 32), base_filters=4, depth=1, norm=None)  # 46 * 32**2 + 32 * 16**2
    55296
    """
    widths = _widths(base_filters, depth, max_filters)

    def pixels(step: int) -> int:  # one map's values at 1/step of the input's resolution
        return math.prod(max(1, n // step) for n in shape)

    def block(inputs: int, filters: int, normed: bool) -> int:  # maps of _conv_block
        shortcut = (1 + (inputs != filters)) if residual else 0  # the add, the projection
        return (6 if normed else 4) * filters + shortcut * filters

    enc_norm = norm is not None and not decoder_norm_only
    total, inputs = 0, in_channels
    if stem_stride > 1:  # conv, norm, ReLU at the stem's resolution
        total += (3 if enc_norm else 2) * base_filters * pixels(stem_stride)
        inputs = base_filters
    for level, width in enumerate(widths[:-1]):  # the block, then its pooled output
        step = stem_stride * 2**level
        total += block(inputs, width, enc_norm) * pixels(step) + width * pixels(2 * step)
        inputs = width
    bottom = pixels(stem_stride * 2**depth)
    total += (block(inputs, widths[-1], enc_norm) + widths[-1] * (dropout > 0)) * bottom
    for level in reversed(range(depth)):  # upsampling, concatenation, block
        width, below = widths[level], widths[level + 1]
        up = width if upsample == "transpose" else below + width  # resize, then conv
        total += (up + 2 * width + block(2 * width, width, norm is not None)) * pixels(
            stem_stride * 2**level)
    if stem_stride > 1:  # upsampled to the full resolution and one more block there
        up = base_filters if upsample == "transpose" else 2 * base_filters
        total += (up + block(base_filters, base_filters, norm is not None)) * pixels(1)
    return total + pixels(1)  # the one-channel mask


def model_divisor(model: keras.Model) -> int:
    """The input-size multiple of a built or loaded model.

    It is the product of the strides of the model's downsampling layers: pooling
    layers and strided (non-transposed) convolutions. For a model from
    :func:`unet` this equals ``size_divisor(depth, stem_stride)``.

    Parameters
    ----------
    model : keras.Model
        For example ``keras.saving.load_model(path, safe_mode=True, compile=False)``.

    Returns
    -------
    int
        1 when the model never downsamples.
    """
    downsampling = (layers.MaxPooling2D, layers.MaxPooling3D, layers.AveragePooling2D,
                    layers.AveragePooling3D, layers.Conv2D, layers.Conv3D)  # not ConvTranspose
    divisor = 1
    for layer in model.layers:
        if isinstance(layer, downsampling):
            divisor *= max(layer.strides)
    return divisor


def conv_flops(model: keras.Model, shape: tuple[int, ...]) -> int:
    """Floating-point operations of one input of spatial ``shape`` through the convolutions.

    A multiply-add counts 2. Convolutions (transposed ones included) are nearly all
    of a U-Net's work; normalisation, activations and pooling are left out. A
    training step costs about 3 times this (forward, and the gradients with respect
    to inputs and weights).

    Parameters
    ----------
    model : keras.Model
        A model from :func:`unet` (any input size).
    shape : tuple of int
        Spatial input size, a multiple of :func:`model_divisor`.

    Returns
    -------
    int
        FLOPs per input.

    Examples
    --------
    >>> conv_flops(unet(ndim=2, base_filters=4, depth=1, norm=None), (8, 8)) > 0
    True
    """
    import numpy as np

    fixed = keras.models.clone_model(model, input_tensors=keras.Input(shape + (model.input_shape[-1],)))
    total = 0
    for layer in fixed.layers:
        if isinstance(layer, (layers.Conv2D, layers.Conv3D)):  # ConvNDTranspose subclasses ConvND
            # kernel (*k, C_in, C_out); transposed (*k, C_out, C_in), applied per input position
            where = layer.input if "Transpose" in type(layer).__name__ else layer.output
            total += 2 * int(np.prod(layer.kernel.shape)) * int(np.prod(where.shape[1:-1]))
    return total


def with_input_channels(model: keras.Model, channels: int, keep: int = 0) -> keras.Model:
    """A copy of a one-channel ``model`` that takes ``channels`` input channels.

    Every layer keeps its weights, except the layers that read the input image (the
    first convolution, and a residual block's 1×1 projection of it): there the
    one-channel kernel goes to input channel ``keep`` and the other channels' kernels
    start at zero. So the widened model computes exactly what the original does on
    that channel, whatever the others hold; their kernels still receive gradients
    (the gradient of a weight is its input times the output's gradient, not the
    weight), so fine-tuning learns to use them from the model's known behaviour.
    Copies or a scaled mean of the kernel would instead feed the pretrained filters
    intensities (photoacoustics, say) they never saw, and spoil the start.

    Parameters
    ----------
    model : keras.Model
        A model whose input has one channel, such as the bundled BUSI model.
    channels : int
        Input channels of the copy.
    keep : int
        The channel that takes the original kernel (e.g. the index of ``us``).

    Returns
    -------
    keras.Model
        Uncompiled, with the original's layers, names and weights.
    """
    import numpy as np

    if model.inputs[0].shape[-1] != 1 or not 0 <= keep < channels:
        raise ValueError(f"widens one-channel models only, keeping a channel in 0..{channels - 1}; "
                         f"got {model.inputs[0].shape[-1]} channels and keep={keep}")
    config = model.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # recorded input shapes: layers build on the new ones
        if layer["class_name"] == "InputLayer":
            shape = list(layer["config"]["batch_shape"])
            layer["config"]["batch_shape"] = shape[:-1] + [channels]
    wide = keras.Model.from_config(config)
    weights = []
    for old, new in zip(model.get_weights(), wide.get_weights()):
        if old.shape != new.shape:  # (*kernel, 1, filters) -> (*kernel, channels, filters)
            new = np.zeros(new.shape, old.dtype)
            new[..., keep, :] = old[..., 0, :]
            old = new
        weights.append(old)
    wide.set_weights(weights)
    return wide
