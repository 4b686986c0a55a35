"""The optical probe (`python -m tools.probe`): IEC 62056-21 readout and the
authenticated full download (M18, N06), and a look at a download file.

    readout  --port PORT [--address ID] [--json]
    download --port PORT --key-file F -o FILE [--baud 19200]
    show     FILE [--key-file F]

PORT is a serial device (/dev/ttyUSB0) or a pyserial URL (socket://host:port,
the virtual board's optical port). The key file comes from
`headend keys probe-key METER --operator OP -o FILE` (0600); the meter's own
key never leaves the head-end.
"""

VERSION = "0.1.0"
TOOL = f"ami-probe {VERSION}"
