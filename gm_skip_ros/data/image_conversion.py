"""Camera frames (the fields of sensor_msgs/Image and CompressedImage) to H x W x 3 RGB uint8.

No rclpy here: the functions take the message's fields, so they are tested without ROS and
used by the node, the bag replay and the rosbag reader alike.

Supported raw encodings (``sensor_msgs/image_encodings``):

* ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` (8 bit per channel);
* ``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``, ``mono16`` (16 bit, scaled to 8 bit by
  keeping the high byte; byte order from ``is_bigendian``);
* ``yuv422`` / ``uyvy`` (U0 Y0 V0 Y1) and ``yuv422_yuy2`` / ``yuyv`` (Y0 U0 Y1 V0), converted
  with the BT.601 limited-range matrix OpenCV (and so cv_bridge) uses.

Rows are ``step`` bytes long; padding after ``width * bytes_per_pixel`` is ignored.
Every problem raises :class:`ImageConversionError` with a ``reason`` code the node counts
in its diagnostics.
"""
from __future__ import annotations

import numpy as np

#: Default upper bound on width * height (a 16-megapixel frame).
DEFAULT_MAX_PIXELS = 16_777_216

# encoding -> (channels, bytes per channel, channel order of the stored pixels)
_PLANAR = {
    "rgb8": (3, 1, "rgb"),
    "bgr8": (3, 1, "bgr"),
    "rgba8": (4, 1, "rgb"),
    "bgra8": (4, 1, "bgr"),
    "mono8": (1, 1, "mono"),
    "8uc1": (1, 1, "mono"),
    "8uc3": (3, 1, "bgr"),  # OpenCV's default channel order
    "rgb16": (3, 2, "rgb"),
    "bgr16": (3, 2, "bgr"),
    "rgba16": (4, 2, "rgb"),
    "bgra16": (4, 2, "bgr"),
    "mono16": (1, 2, "mono"),
    "16uc1": (1, 2, "mono"),
}
# packed 4:2:2 encodings -> byte offsets of (Y0, U, Y1, V) inside each 4-byte macro-pixel
_YUV422 = {
    "yuv422": (1, 0, 3, 2),
    "uyvy": (1, 0, 3, 2),
    "yuv422_yuy2": (0, 1, 2, 3),
    "yuyv": (0, 1, 2, 3),
}

SUPPORTED_ENCODINGS = tuple(sorted(set(_PLANAR) | set(_YUV422)))


class ImageConversionError(ValueError):
    """A frame that cannot be turned into an RGB image.

    ``reason`` is one of: ``unknown_encoding``, ``empty``, ``too_large``, ``bad_step``,
    ``short_data``, ``corrupt_compressed``.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_size(height: int, width: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise for a zero-size frame or one larger than ``max_pixels``."""
    if height <= 0 or width <= 0:
        raise ImageConversionError("empty", f"zero-size image ({width}x{height})")
    if height * width > max_pixels:
        raise ImageConversionError(
            "too_large",
            f"image {width}x{height} has {width * height} pixels, more than max_image_pixels="
            f"{max_pixels}",
        )


def bytes_per_pixel(encoding: str) -> float:
    """Bytes one pixel takes in ``encoding`` (2 for the packed 4:2:2 formats)."""
    enc = encoding.lower()
    if enc in _PLANAR:
        channels, depth, _ = _PLANAR[enc]
        return channels * depth
    if enc in _YUV422:
        return 2
    raise ImageConversionError(
        "unknown_encoding",
        f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
    )


def validate_raw(height: int, width: int, encoding: str, step: int, data_len: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Every check a ``sensor_msgs/Image`` must pass before any conversion, in one place.

    Size (zero or more than ``max_pixels``), known ``encoding``, ``step`` of at least
    ``width * bytes_per_pixel`` and ``data_len`` (bytes of ``data``) of at least
    ``height * step``. Raises :class:`ImageConversionError`; returns the bytes of pixels in
    a row (``width * bytes_per_pixel``). Called by :func:`raw_to_rgb` and by the node
    before it hands a frame to cv_bridge, so neither path lets a bad frame through.
    """
    height, width, step, data_len = int(height), int(width), int(step), int(data_len)
    check_size(height, width, max_pixels)
    bpp = bytes_per_pixel(encoding)
    row_bytes = int(width * bpp)
    if step < row_bytes:
        raise ImageConversionError(
            "bad_step", f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} "
            f"for {encoding} {width}x{height}")
    if data_len < height * step:
        raise ImageConversionError(
            "short_data", f"data has {data_len} bytes, fewer than height*step = "
            f"{height}*{step} = {height * step}")
    if encoding.lower() in _YUV422 and width % 2:
        raise ImageConversionError(
            "bad_step", f"4:2:2 images need an even width, got {width}")
    return row_bytes


def raw_to_rgb(height: int, width: int, encoding: str, is_bigendian: bool, step: int,
               data, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` into a (height, width, 3) uint8 RGB array.

    ``data`` is any bytes-like object (bytes, bytearray, memoryview, array.array or a uint8
    numpy array). The result never aliases ``data``. Checked by :func:`validate_raw` first.
    """
    height, width, step = int(height), int(width), int(step)
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    row_bytes = validate_raw(height, width, encoding, step, buf.size, max_pixels)
    rows = buf[: height * step].reshape(height, step)[:, :row_bytes]
    enc = encoding.lower()
    if enc in _YUV422:
        return _yuv422_to_rgb(rows, height, width, _YUV422[enc])
    channels, depth, order = _PLANAR[enc]
    if depth == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        pix = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
        pix = (pix >> 8).astype(np.uint8)
    else:
        pix = rows.reshape(height, width, channels)
    if order == "mono":
        return np.repeat(pix[:, :, :1], 3, axis=2)
    rgb = pix[:, :, :3]
    if order == "bgr":
        rgb = rgb[:, :, ::-1]
    return np.array(rgb, dtype=np.uint8, order="C", copy=True)  # never a view of data


def _yuv422_to_rgb(rows: np.ndarray, height: int, width: int, offsets) -> np.ndarray:
    macro = rows.reshape(height, width // 2, 4).astype(np.int32)
    y0, u, y1, v = (macro[:, :, i] for i in offsets)
    y = np.empty((height, width), np.int32)
    y[:, 0::2] = y0
    y[:, 1::2] = y1
    u = np.repeat(u, 2, axis=1) - 128
    v = np.repeat(v, 2, axis=1) - 128
    # BT.601 limited range, fixed point with a 20-bit shift: OpenCV's
    # COLOR_YUV2RGB_UYVY / _YUY2 coefficients (color_yuv.simd.hpp).
    c = np.maximum(y - 16, 0) * 1220542
    half = 1 << 19
    r = (c + 1673527 * v + half) >> 20
    g = (c - 852492 * v - 409993 * u + half) >> 20
    b = (c + 2116026 * u + half) >> 20
    return np.clip(np.stack([r, g, b], axis=2), 0, 255).astype(np.uint8)


def compressed_size(data) -> tuple[int, int] | None:
    """(width, height) read from the header of a compressed image without decoding it;
    None when PIL cannot identify it (the decoder then has the last word). Raises
    ImageConversionError ``too_large`` for a header PIL itself calls a decompression bomb."""
    import io

    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    try:
        with Image.open(io.BytesIO(memoryview(data).cast("B"))) as im:
            return int(im.width), int(im.height)
    except Image.DecompressionBombError as exc:  # > 2 * PIL.Image.MAX_IMAGE_PIXELS
        raise ImageConversionError("too_large", f"compressed image header: {exc}") from None
    except Exception:  # noqa: BLE001 - unidentified or corrupt header: let the decoder decide
        return None


def compressed_to_rgb(fmt: str, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the ``data`` of a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) to RGB.

    ``fmt`` is only used in messages: the image codec is detected from the bytes.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size == 0:
        raise ImageConversionError("empty", f"compressed image ({fmt or 'no format'}) has no data")
    # refuse an oversized frame from its header, before decoding allocates width*height*3
    size = compressed_size(buf)
    if size is not None:
        check_size(size[1], size[0], max_pixels)
    rgb = None
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency; PIL is the fallback
        cv2 = None
    if cv2 is not None:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is not None:
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    else:  # pragma: no cover
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(buf.tobytes())) as im:
                check_size(im.height, im.width, max_pixels)
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError):
            rgb = None
    if rgb is None:
        raise ImageConversionError(
            "corrupt_compressed", f"compressed image ({fmt or 'no format'}, {buf.size} bytes) "
            "could not be decoded")
    check_size(rgb.shape[0], rgb.shape[1], max_pixels)
    return rgb
