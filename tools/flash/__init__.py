"""The flash tool (`python -m tools.flash`, `make flash PORT=…`): from the sources to a
meter reporting at the head-end.

Modules: `bundle` (build: .mpy + manifest, freeze manifest, partition table),
`config` (provision: one meter's config and secrets), `session` (one mpremote
session with a board), `deploy` (copy, verify on the board, NVS, reset, wait),
`espflash` (esptool wrappers), `progress` (a bar per file), `cli`.
"""
