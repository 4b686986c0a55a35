"""M20: keys as secrets: the master key file, key versions, held layouts, redaction.

`headend keys init|show|rotate` and `headend meters accept-layout` in-process
(`main(argv)`), `headend serve` as a real process where its refusal is the
point; the redaction filter fed the secrets the head-end holds.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from headend.cli import build_parser, main
from headend.core import Core
from headend.redact import RedactingFormatter, install, redact
from headend.store import SqlStore
from protocol.auth import mqtt_password
from protocol.frame import decode
from tests.headend.conftest import ctx_of, open_at
from tests.support.cli import refused, run_module
from tests.support.signed import SimMeter, deliver, frames_to

pytestmark = pytest.mark.req("M20")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_m20_keys_init_writes_0600_refuses_to_overwrite_and_prints_no_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "master.key"
    os.umask(0o022)
    code, out, _ = run(capsys, "keys", "init", str(path))
    key = path.read_text().strip()
    assert code == 0 and len(bytes.fromhex(key)) == 32 and key not in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _, err = run(capsys, "keys", "init", str(path))
    assert code == 2 and "refusing to overwrite" in err and path.read_text().strip() == key


def test_m20_a_master_key_file_open_to_others_is_refused_by_every_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str
) -> None:
    path = tmp_path / "master.key"
    assert run(capsys, "keys", "init", str(path))[0] == 0
    assert run(capsys, "db", "init", "--database", sqlite_url)[0] == 0
    path.chmod(0o640)
    toml = tmp_path / "h.toml"
    toml.write_text(f'[headend]\nmaster_key_file = "{path}"\ndatabase = "{sqlite_url}"\n')
    proc = run_module("headend", "serve", "--config", str(toml))
    line = refused(proc)
    assert "open to group or others (mode 0640)" in line and "chmod 600" in line
    code, _, err = run(capsys, "meters", "list", "--config", str(toml))
    assert code == 2 and "chmod 600" in err
    path.chmod(0o600)
    assert run(capsys, "meters", "list", "--config", str(toml))[0] == 0


def test_m20_serve_refuses_the_all_zero_key_without_dev(tmp_path: Path, sqlite_url: str) -> None:
    line = refused(run_module("headend", "serve", "--database", sqlite_url))
    assert "refusing the development master key" in line and "keys init" in line


def test_m20_keys_rotate_and_show_name_versions_never_keys(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(sqlite_url, store_at)))
    m = SimMeter(901)
    deliver(core, 901, m.frame("register", m.register_body()))
    code, out, _ = run(capsys, "keys", "show", "901", "--database", sqlite_url, "--json")
    assert code == 0 and '"key_version": 0' in out and '"rotation": "current"' in out
    assert m.key.hex() not in out and "fingerprint" in out
    code, out, _ = run(capsys, "keys", "rotate", "901", "--database", sqlite_url)
    assert code == 0 and "rotation to key version 1 queued" in out
    code, _, err = run(capsys, "keys", "rotate", "901", "--database", sqlite_url)
    assert code == 2 and "under way" in err
    code, out, _ = run(capsys, "keys", "show", "901", "--database", sqlite_url)
    assert "queued" in out and "pending_version" in out
    code, _, err = run(capsys, "keys", "show", "999", "--database", sqlite_url)
    assert code == 2 and "not registered" in err


def test_m20_a_register_cannot_change_the_layout_until_the_operator_accepts_it(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, store_at: list[SqlStore]
) -> None:
    core = Core(ctx_of(open_at(sqlite_url, store_at)))
    m = SimMeter(902, channels=2)
    out = deliver(core, 902, m.frame("register", m.register_body()))
    assert decode(frames_to(out, 902)[0])["body"]["status"] == 0
    # the same meter (signed, so really it) now says 4 channels: held, refused, logged
    for _ in range(2):
        out = deliver(core, 902, m.frame("register", m.register_body(channels=4)))
        assert decode(frames_to(out, 902)[0])["body"]["status"] != 0
    assert len(core.ctx.registry.get(902).channels) == 2
    held = core.ctx.activity.lines(meter_id=902, kinds=["layout_held"])
    assert len(held) == 1 and "accept-layout 902" in held[0].detail  # a repeat logs nothing
    code, out_text, _ = run(capsys, "meters", "show", "902", "--database", sqlite_url)
    assert code == 0 and "layout_held" in out_text
    code, out_text, _ = run(capsys, "meters", "accept-layout", "902", "--database", sqlite_url)
    assert code == 0 and "4 channel layout accepted" in out_text
    assert len(core.ctx.registry.get(902).channels) == 4
    out = deliver(core, 902, m.frame("register", m.register_body(channels=4)))
    assert decode(frames_to(out, 902)[0])["body"]["status"] == 0
    code, _, err = run(capsys, "meters", "accept-layout", "902", "--database", sqlite_url)
    assert code == 2 and "no registration is waiting" in err


SECRETS = (
    "postgresql://ami:s3cret-pw@db.example:5432/ami",
    "ab" * 32,  # a master or meter key
    mqtt_password(b"\x07" * 32),
)


def test_m20_secrets_are_redacted_from_log_lines_errors_and_help(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    for s in SECRETS:
        assert "s3cret-pw" not in redact(s) and "ab" * 32 not in redact(s)
        assert mqtt_password(b"\x07" * 32) not in redact(f"password={s}")
    logger = logging.getLogger("headend.test_redact")
    handler = logging.StreamHandler(stream := __import__("io").StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    install(logger)
    assert isinstance(handler.formatter, RedactingFormatter)
    try:
        raise ValueError(f"connect {SECRETS[0]} with key {SECRETS[1]}")
    except ValueError:
        logger.exception("serving: database %s, mqtt password %s", SECRETS[0], SECRETS[2])
    logger.removeHandler(handler)
    text = stream.getvalue()
    assert "serving" in text and "Traceback" in text
    for secret in ("s3cret-pw", SECRETS[1], SECRETS[2]):
        assert secret not in text
    # a CLI error naming a DSN, and every --help, with the secrets in the environment
    code, _, err = run(
        capsys, "meters", "list", "--database", "postgresql://ami:s3cret-pw@127.0.0.1:1/x"
    )
    assert code != 0 and "s3cret-pw" not in err
    os.environ["AMI_MASTER_KEY"] = SECRETS[1]
    try:
        parser = build_parser()
        helps = [parser.format_help()]
        helps += [p.format_help() for p in parser._subparsers._group_actions[0].choices.values()]  # type: ignore[union-attr]
    finally:
        del os.environ["AMI_MASTER_KEY"]
    assert all(SECRETS[1] not in h and "s3cret" not in h for h in helps)
