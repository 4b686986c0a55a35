"""tools.flash build: the bundle (.mpy + manifest), the freeze manifest, the partition
table; a file that does not compile refuses the whole build; --dry-run writes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tests.support.cli import refused, run_module
from tools.fwimage import FIRMWARE, firmware_sources


def _csv_rows(text: str) -> list[list[str]]:
    rows = [ln.split(",") for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [[c.strip() for c in r] for r in rows]


def test_build_writes_mpy_files_a_hashed_manifest_a_freeze_manifest_and_partitions(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    done = run_module("tools.flash", "build", "--board", "esp32", "-o", str(out))
    assert done.returncode == 0, done.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["board"] == "esp32"
    assert f'_FW_VERSION = const("{m["fw_version"]}")' in (FIRMWARE / "meter/meter.py").read_text()
    assert m["mpy_cross"].startswith("MicroPython v1.28") and "mpy v6" in m["mpy_cross"]
    files = m["files"]
    on_disk = {p.relative_to(out / "fs").as_posix() for p in (out / "fs").rglob("*") if p.is_file()}
    assert set(files) == on_disk
    for name, f in files.items():
        data = (out / "fs" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
        if name != "main.py":
            assert name.endswith(".mpy") and data[:1] == b"M"  # mpy header
    assert "hal/esp32.mpy" in files and "hal/unix.mpy" not in files
    assert "hal/norflash.mpy" not in files and "app.mpy" in files
    assert "from app import main" in (out / "fs" / "main.py").read_text()

    # the freeze manifest names files that exist beside it (paths relative to it)
    calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    def rec(name: str) -> object:
        return lambda *a, **k: calls.append((name, a, k))

    names = ("include", "module", "package")
    exec((out / "manifest.py").read_text(), {n: rec(n) for n in names})
    assert calls[0] == ("include", ("$(PORT_DIR)/boards/manifest.py",), {})
    frozen = set()
    for name, args, kw in calls[1:]:
        base = out / str(kw["base_path"])
        if name == "module":
            frozen.add(str(args[0]))
        else:
            for f in kw["files"]:  # type: ignore[attr-defined]
                frozen.add(f"{args[0]}/{f}")
        assert all((base / f).exists() for f in frozen)
    # the same modules as the bundle's, the app frozen as main.py (a frozen main.py runs at boot)
    assert frozen == {
        "main.py" if n == "app.mpy" else n[:-4] + ".py" for n in files if n != "main.py"
    }
    assert (out / "src" / "main.py").read_text() == (FIRMWARE / "main.py").read_text()

    # ESP-IDF table: contiguous from 0x9000 to 4 MiB, the meter's store as README says
    rows = _csv_rows((out / "partitions.csv").read_text())
    assert [r[0] for r in rows] == ["nvs", "phy_init", "factory", "vfs", "meter"]
    at = 0x9000
    for _name, _type, _sub, off, size, _flags in rows:
        assert int(off, 16) == at
        at = int(off, 16) + int(size, 16)
    assert at == 0x400000
    assert rows[-1][1:5] == ["data", "0x81", "0x3C0000", "0x40000"]


def test_build_refuses_when_a_file_does_not_compile_and_leaves_the_old_bundle(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    assert run_module("tools.flash", "build", "--board", "unix", "-o", str(out)).returncode == 0
    before = (out / "manifest.json").read_text()
    broken = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, broken)
    (broken / "meter" / "ring.py").write_text("def broken(:\n    pass\n")
    line = refused(run_module("tools.flash", "build", "--firmware", str(broken), "-o", str(out)))
    assert line.startswith("error: refusing to build: mpy-cross meter/ring.py:"), line
    assert "SyntaxError" in line
    assert (out / "manifest.json").read_text() == before  # untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_build_dry_run_prints_each_mpy_cross_command_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    done = run_module("tools.flash", "build", "--dry-run", "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    cross = [ln for ln in lines if "mpy-cross -s " in ln]
    assert any(f"-s meter.ring -o {out}/fs/meter/ring.mpy" in ln for ln in cross)
    assert len(cross) == len(firmware_sources("esp32"))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_build_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me\n")
    line = refused(run_module("tools.flash", "build", "-o", str(tmp_path)))
    assert "is not a bundle" in line and (tmp_path / "mine.txt").read_text() == "keep me\n"
