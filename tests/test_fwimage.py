# tools/fwimage: the firmware as a ROMFS image (M05's "fits the ESP32 layout"
# with code in flash; firmware README "Heap").
from pathlib import Path

import pytest

from tests.support.cli import refused, run_module, unwritable_dir
from tools.fwimage import FIRMWARE, build_image, compile_tree


def test_m05_image_holds_one_hal_and_no_host_code(tmp_path: Path) -> None:
    files = {p.relative_to(tmp_path).as_posix() for p in compile_tree(tmp_path, "esp32")}
    assert {"main.mpy", "meter/meter.mpy", "meter/store.mpy", "link/mqtt.mpy"} <= files
    assert "hal/esp32.mpy" in files and "hal/unix.mpy" not in files
    assert not {"hal/norflash.mpy", "hal/hostkit.mpy", "meter/wear.mpy"} & files  # host-side
    ring = (tmp_path / "meter" / "ring.mpy").read_bytes()
    assert b"meter.ring" in ring and str(FIRMWARE).encode() not in ring  # named by module


def test_m05_image_is_romfs_and_refuses_an_unknown_board() -> None:
    img = build_image("unix")
    assert img[:3] == b"\xd2\xcd\x31" and b"unix.mpy" in img and b"esp32.mpy" not in img
    with pytest.raises(ValueError, match="stm32"):
        build_image("stm32")


@pytest.mark.parametrize("where", ["missing-dir", "under-a-file", "a-directory", "not-writable"])
def test_an_image_it_cannot_write_is_refused_in_one_line(tmp_path: Path, where: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    locked = unwritable_dir(tmp_path) if where == "not-writable" else tmp_path
    before = sorted(locked.iterdir())
    out = {
        "missing-dir": tmp_path / "not" / "writable" / "x.romfs",
        "under-a-file": afile / "x.romfs",
        "a-directory": tmp_path,
        "not-writable": locked / "x.romfs",
    }[where]
    line = refused(run_module("tools.fwimage", "--board", "unix", "-o", str(out)))
    assert line.startswith(f"error: cannot write {out}: ")
    assert sorted(locked.iterdir()) == before  # no image, no temp file
    assert afile.read_text() == "x"


def test_the_image_is_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "fw.romfs"
    proc = run_module("tools.fwimage", "--board", "unix", "-o", str(out))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert out.read_bytes() == build_image("unix")
    assert [p.name for p in tmp_path.iterdir()] == ["fw.romfs"]
