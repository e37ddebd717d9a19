"""Write libFuzzer seed files from spec/vectors (used by `make fuzz`).

Usage: python3 fuzz/seeds.py VECTOR_DIR OUT_DIR  -> OUT_DIR/<fuzzer>/<n>.bin
"""

import json
import pathlib
import sys


def main() -> None:
    vectors, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    seeds: dict[str, list[bytes]] = {}

    def add(name: str, data: bytes) -> None:
        seeds.setdefault(name, []).append(data)

    sphinx = json.loads((vectors / "sphinx.json").read_text())
    for vec in [*sphinx["forward"], sphinx["circuit"], sphinx["surb"]]:
        for step in vec["steps"]:
            add("sphinx_unwrap", bytes.fromhex(step["input"]))
    add("surb_reply", bytes.fromhex(sphinx["surb"]["surb"]))
    cells = json.loads((vectors / "cells.json").read_text())
    add("cell_open", bytes.fromhex(cells["forward"]["sealed_by_exit_key"]))
    add("relay_cell_decode", bytes.fromhex(cells["forward"]["plaintext"]))
    add("relay_cell_decode", bytes.fromhex(cells["backward"]["plaintext"]))
    for unit in cells["units"]:
        add("unit_decode", bytes.fromhex(unit["encoded"]))
    frames = json.loads((vectors / "htx_frames.json").read_text())
    for side in ("client", "server"):
        for frame in frames["frames"][side]:
            add("frame_open", bytes.fromhex(frame["wire"]))
            header, payload = bytes.fromhex(frame["header"]), bytes.fromhex(frame["payload"])
            add("frame_open", header[3:8] + payload)
    tickets = json.loads((vectors / "htx_tickets.json").read_text())
    for ticket in tickets["tickets"]:
        add("ticket_parse", ticket["carrier"].encode())
    directory = json.loads((vectors / "directory.json").read_text())
    add("envelope_split", bytes.fromhex(directory["descriptor"]["envelope"]))
    for name, items in seeds.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(items):
            (folder / f"{i}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
