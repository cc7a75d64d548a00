"""Test helpers: run the CLI, write manifests, decode rendered labels with a real decoder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import zxingcpp

# Standard QR only. Since zxing-cpp 3, BarcodeFormat.QRCode names the whole QR family, Micro QR
# included: on a dense sheet it now and then "finds" a Micro QR in a corner of a real symbol.
QR_MODEL2 = zxingcpp.BarcodeFormat.QRCodeModel2

# The HTTP status of each activation reason code, as the issue specifies them.
REASON_STATUS = {
    "malformed": 400,
    "forged": 403,
    "unknown_key": 403,
    "revoked_key": 403,
    "expired": 410,
    "unknown_device": 404,
    "revoked_device": 403,
    "already_activated": 409,
    "recalled": 403,
}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def serials_csv(path: Path, n: int, prefix: str = "SN", device_type: str = "sensor") -> Path:
    rows = [[f"{prefix}{i:06d}", device_type, "Acme", "M-1"] for i in range(n)]
    return write_csv(path, ["serial", "device_type", "manufacturer", "model"], rows)


def decode_pdf(path: Path, dpi: int = 300) -> list[list[str]]:
    """Rasterise every page with PDFium and decode its QR codes with zxing-cpp."""
    pages: list[list[str]] = []
    pdf = pdfium.PdfDocument(str(path))
    try:
        for page in pdf:
            bitmap = page.render(scale=dpi / 72, grayscale=True)
            image = bitmap.to_numpy()
            results = zxingcpp.read_barcodes(image, formats=QR_MODEL2)
            pages.append([r.text for r in results])
            page.close()
    finally:
        pdf.close()
    return pages


def pdf_page_sizes(path: Path) -> list[tuple[float, float]]:
    pdf = pdfium.PdfDocument(str(path))
    try:
        return [tuple(page.get_size()) for page in pdf]  # type: ignore[misc]
    finally:
        pdf.close()


def with_payload(keyring: Any, device: Any) -> Any:
    """The device record plus `payload`: the token its label carries, signed again from its key
    id and expiry as `labels` does (the registry never stores it). Still a DeviceRecord, so the
    library takes it; fields read as record.name or, in older tests, record["name"]."""
    import dataclasses

    from provision.payload import device_token
    from provision.registry import DeviceRecord

    @dataclasses.dataclass(frozen=True)
    class Labelled(DeviceRecord):
        payload: str = ""

        def __getitem__(self, key: str) -> Any:
            return getattr(self, key)

    token = device_token(keyring, device.key_id, device.device_id, device.expires_at)
    fields = {f.name: getattr(device, f.name) for f in dataclasses.fields(DeviceRecord)}
    return Labelled(**fields, payload=token)


COMPONENT_COLUMNS = [
    "serial",
    "component_type",
    "component_spec",
    "component_serial",
    "supplier",
    "lot",
]


def register_with_components(
    registry: Any,
    keyring: Any,
    folder: Path,
    batch: str,
    components: list[list[str]],
    *,
    line: str = "line-1",
    model: str = "M-1",
) -> dict[str, Any]:
    """Register a batch from a components manifest (rows in COMPONENT_COLUMNS order; each
    device once in the serials manifest): serial -> device record with its payload."""
    from provision.pipeline import register_batch
    from provision.serials import device_id

    serials = list(dict.fromkeys(row[0] for row in components))
    manifest = write_csv(
        folder / f"{batch}-serials.csv",
        ["serial", "device_type", "manufacturer", "model", "line"],
        [[s, "sensor", "Acme", model, line] for s in serials],
    )
    comps = write_csv(folder / f"{batch}-components.csv", COMPONENT_COLUMNS, components)
    register_batch(registry, keyring, manifest, components_path=comps, batch=batch)
    found = {s: registry.devices.get(device_id(keyring.pepper, s)) for s in serials}
    assert all(d is not None for d in found.values())
    return {s: with_payload(keyring, d) for s, d in found.items()}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flush(redis_url: str) -> None:
    """Empty the test Redis (rate-limit counts of earlier tests' clients)."""
    import socket

    host, port = redis_url.removeprefix("redis://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(16).startswith(b"+OK")


def exit_in_worker(*args: Any, **kwargs: Any) -> None:
    """A worker process's task that ends its process at once, as the OOM killer or `kill -9`
    would (tests put it in place of a pool's task function)."""
    import os

    os._exit(70)
