"""Image conversion without rclpy: every encoding, step padding, byte order, bad frames."""
import cv2
import numpy as np
import pytest

from gm_skip_ros.data.image_conversion import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    bytes_per_pixel,
    compressed_size,
    compressed_to_rgb,
    raw_to_rgb,
    validate_raw,
)


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)


def _pad(rows: np.ndarray, pad: int) -> tuple[bytes, int]:
    """(height, row_bytes) uint8 -> bytes with ``pad`` junk bytes after every row, step."""
    h, row = rows.shape
    out = np.full((h, row + pad), 0xAB, np.uint8)
    out[:, :row] = rows
    return out.tobytes(), row + pad


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda a: a),
    ("bgr8", lambda a: a[:, :, ::-1]),
    ("rgba8", lambda a: np.dstack([a, np.full(a.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda a: np.dstack([a[:, :, ::-1], np.full(a.shape[:2], 7, np.uint8)])),
])
def test_8bit_colour_encodings_round_trip(rgb, encoding, make, pad):
    pix = np.ascontiguousarray(make(rgb))
    data, step = _pad(pix.reshape(pix.shape[0], -1), pad)
    out = raw_to_rgb(5, 6, encoding, False, step, data)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, rgb)


def test_mono8_is_replicated_to_three_channels(rgb):
    gray = rgb[:, :, 0]
    data, step = _pad(gray, 2)
    out = raw_to_rgb(5, 6, "mono8", False, step, data)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("pad", [0, 4])
def test_16bit_honours_endianness_and_keeps_high_byte(rgb, big, pad):
    hi = rgb[:, :, 1].astype(np.uint16)
    value = (hi << 8) | 0x5A  # low byte must not leak into the result
    raw = value.astype(">u2" if big else "<u2").view(np.uint8).reshape(5, 12)
    data, step = _pad(raw, pad)
    out = raw_to_rgb(5, 6, "mono16", big, step, data)
    np.testing.assert_array_equal(out[:, :, 0], rgb[:, :, 1])
    # the same bytes read with the wrong byte order give a different image
    wrong = raw_to_rgb(5, 6, "mono16", not big, step, data)
    assert not np.array_equal(wrong, out)


@pytest.mark.parametrize("encoding,order", [("rgb16", "rgb"), ("bgr16", "bgr"),
                                            ("rgba16", "rgb"), ("bgra16", "bgr")])
def test_16bit_colour(rgb, encoding, order):
    pix = rgb if order == "rgb" else rgb[:, :, ::-1]
    if encoding.endswith("a16"):
        pix = np.dstack([pix, np.zeros(rgb.shape[:2], np.uint8)])
    value = pix.astype(np.uint16) << 8
    data = value.astype(">u2").tobytes()
    out = raw_to_rgb(5, 6, encoding, True, 6 * pix.shape[2] * 2, data)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding,code", [
    ("yuv422", cv2.COLOR_YUV2RGB_UYVY), ("uyvy", cv2.COLOR_YUV2RGB_UYVY),
    ("yuv422_yuy2", cv2.COLOR_YUV2RGB_YUY2), ("yuyv", cv2.COLOR_YUV2RGB_YUY2),
])
@pytest.mark.parametrize("pad", [0, 6])
def test_yuv422_matches_opencv(encoding, code, pad):
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, size=(4, 8, 2), dtype=np.uint8)  # 4 rows, width 8
    data, step = _pad(packed.reshape(4, 16), pad)
    out = raw_to_rgb(4, 8, encoding, False, step, data)
    ref = cv2.cvtColor(packed, code)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_yuv422_grey_is_grey():
    # U = V = 128 and Y = 16..235 is grey 0..255 in the limited range
    packed = np.array([[128, 16, 128, 235]], np.uint8)  # U Y0 V Y1
    out = raw_to_rgb(1, 2, "uyvy", False, 4, packed.tobytes())
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_result_does_not_alias_input(rgb):
    buf = bytearray(rgb.tobytes())
    out = raw_to_rgb(5, 6, "rgb8", False, 18, buf)
    buf[0] ^= 0xFF
    assert out[0, 0, 0] == rgb[0, 0, 0]


def test_every_supported_encoding_converts():
    for enc in SUPPORTED_ENCODINGS:
        step = int(4 * bytes_per_pixel(enc))
        out = raw_to_rgb(2, 4, enc, False, step, bytes(range(2 * step)))
        assert out.shape == (2, 4, 3) and out.dtype == np.uint8, enc


BAD_FRAMES = [
    (dict(height=2, width=2, encoding="rgb42", step=6, data=bytes(12)), "unknown_encoding"),
    (dict(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), "short_data"),
    (dict(height=2, width=2, encoding="rgb8", step=5, data=bytes(12)), "bad_step"),
    # step too small although data is long enough: rows would be read at the wrong offsets
    (dict(height=48, width=64, encoding="rgb8", step=10, data=bytes(48 * 64 * 3)), "bad_step"),
    (dict(height=0, width=2, encoding="rgb8", step=6, data=b""), "empty"),
    (dict(height=2, width=0, encoding="rgb8", step=0, data=b""), "empty"),
    (dict(height=2, width=3, encoding="uyvy", step=6, data=bytes(12)), "bad_step"),
    (dict(height=5000, width=5000, encoding="mono8", step=5000, data=b""), "too_large"),
]


@pytest.mark.parametrize("kwargs,reason", BAD_FRAMES)
def test_bad_frames_raise_with_reason(kwargs, reason):
    with pytest.raises(ImageConversionError) as info:
        raw_to_rgb(is_bigendian=False, max_pixels=1_000_000, **kwargs)
    assert info.value.reason == reason
    assert str(info.value)


@pytest.mark.parametrize("kwargs,reason", BAD_FRAMES)
def test_validate_raw_refuses_every_bad_frame_raw_to_rgb_refuses(kwargs, reason):
    """The one validation the node runs before cv_bridge as well: same frames, same reasons."""
    data = kwargs.pop("data")
    with pytest.raises(ImageConversionError) as info:
        validate_raw(data_len=len(data), max_pixels=1_000_000, **kwargs)
    assert info.value.reason == reason


def test_validate_raw_bad_step_with_enough_data():
    # 64 px of rgb8 need 192 bytes a row; step 100 is refused even with plenty of data
    with pytest.raises(ImageConversionError, match="step 100 is smaller than") as info:
        validate_raw(48, 64, "rgb8", 100, 48 * 192 * 2)
    assert info.value.reason == "bad_step"
    assert validate_raw(48, 64, "rgb8", 192, 48 * 192) == 192  # row bytes of a good frame
    assert validate_raw(48, 64, "bgra8", 300, 48 * 300) == 256  # padding allowed


def test_compressed_jpeg_and_png(rgb):
    big = cv2.resize(rgb, (48, 40), interpolation=cv2.INTER_NEAREST)
    ok, png = cv2.imencode(".png", big[:, :, ::-1])
    assert ok
    np.testing.assert_array_equal(compressed_to_rgb("png", png.tobytes()), big)
    ok, jpg = cv2.imencode(".jpg", big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_rgb("jpeg", jpg.tobytes())
    assert out.shape == (40, 48, 3)
    assert np.abs(out.astype(int) - big.astype(int)).mean() < 20


def test_compressed_errors(rgb):
    ok, jpg = cv2.imencode(".jpg", rgb)
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("jpeg", jpg.tobytes()[:20])
    assert info.value.reason == "corrupt_compressed"
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("jpeg", b"")
    assert info.value.reason == "empty"
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("jpeg", jpg.tobytes(), max_pixels=10)
    assert info.value.reason == "too_large"


def _blank_png(width: int, height: int) -> bytes:
    """A PNG of a large size but few bytes (1-bit, all black)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


def test_compressed_too_large_is_refused_from_the_header_before_decoding(monkeypatch):
    png = _blank_png(8000, 8000)
    assert len(png) < 2_000_000  # small on the wire, 192 MB once decoded to RGB
    assert compressed_size(png) == (8000, 8000)
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: decoded.append(a) or None)
    with pytest.raises(ImageConversionError, match="8000x8000") as info:
        compressed_to_rgb("png", png, max_pixels=1_000_000)
    assert info.value.reason == "too_large"
    assert decoded == []  # refused without decoding


def test_compressed_size_of_undecodable_bytes_is_left_to_the_decoder():
    assert compressed_size(b"not an image at all") is None
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("png", b"not an image at all")
    assert info.value.reason == "corrupt_compressed"


def test_compressed_header_pil_calls_a_bomb_is_too_large():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    # only a header: 60000 x 60000 pixels, beyond even PIL's decompression-bomb limit
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("png", png, max_pixels=1_000_000_000)
    assert info.value.reason == "too_large"
