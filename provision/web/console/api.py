"""The staff JSON API, for support tools: `Authorization: Bearer <staff token>` (from
`provision staff token NAME`). Everything is visible to it, other people's activation
attempts included, and each call is a line of the staff audit log."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify, request

from provision import audit as audit_lib
from provision import queries
from provision import staff as staff_lib
from provision.alerts import alert_json
from provision.errors import ProvisionError
from provision.registry import DeviceFilter
from provision.states import AlertStatus, DeviceStatus, Reason
from provision.web.common import api_error, bounded_int, services

PREFIX = "/api/v1/staff"


def _who() -> str:
    return str(g.staff.name)


def _record(action: str, subject: str | None = None, detail: dict[str, Any] | None = None) -> None:
    staff_lib.record(services().registry, _who(), action, subject, request.remote_addr, detail)


def blueprint() -> Blueprint:
    bp = Blueprint("staff_api", __name__, url_prefix=PREFIX)

    @bp.before_request
    def _bearer() -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        account = None
        if scheme.lower() == "bearer":
            account = staff_lib.account_of_token(services().registry, token.strip())
        if account is None:
            resp = api_error("unauthorized", 401, "Give a staff token: Authorization: Bearer ...")
            resp[0].headers["WWW-Authenticate"] = 'Bearer realm="provision-staff"'
            return resp
        g.staff = account
        return None

    @bp.errorhandler(ProvisionError)
    def _provision_error(exc: ProvisionError) -> Any:
        return api_error(exc.kind, 400, str(exc))

    @bp.get("/devices/<device_id>/history")
    def history(device_id: str) -> Any:
        registry = services().registry
        device = registry.devices.get(device_id.lower()) if len(device_id) == 16 else None
        if device is None:
            return api_error(Reason.UNKNOWN_DEVICE, 404, f"no device {device_id[:32]!r}")
        limit = bounded_int(request.args.get("limit", "1000"), 1, 100_000)
        if limit is None:
            return api_error("bad_request", 400, "limit: a whole number from 1 to 100000")
        _record("api.history", device.device_id)
        data = audit_lib.device_history(registry, device, limit)
        data["recalls"] = [
            {
                "name": r.name,
                "state": "open" if r.is_open else "closed",
                "hold": r.hold,
                "released_at": m.released_at.isoformat() if m.released_at else None,
                "released_by": m.released_by,
            }
            for r, m in registry.recalls.of_device(device.id)
        ]
        return jsonify(data)

    @bp.get("/find")
    def find() -> Any:
        svc = services()
        q = request.args.get("q", "").strip()
        if not q or len(q) > 512:
            return api_error("bad_request", 400, "q: the text to look for, at most 512 characters")
        result = queries.find(svc.registry, svc.keyring(), q)
        _record("api.find", None, {"hits": len(result.hits)})
        return jsonify(queries.find_json(result, svc.registry.batches.names_by_id()))

    @bp.get("/devices")
    def devices() -> Any:
        registry = services().registry
        status = request.args.get("status") or None
        if status is not None and status not in {s.value for s in DeviceStatus}:
            return api_error("bad_request", 400, f"status: one of {', '.join(DeviceStatus)}")
        limit = bounded_int(request.args.get("limit", "100"), 1, queries.MAX_PAGE)
        if limit is None:
            return api_error("bad_request", 400, f"limit: 1 to {queries.MAX_PAGE}")
        flt = DeviceFilter(
            batch=request.args.get("batch") or None,
            status=DeviceStatus(status) if status else None,
            model=request.args.get("model") or None,
            line=request.args.get("line") or None,
            user=request.args.get("user") or None,
        )
        page = queries.list_devices(registry, flt, after=request.args.get("after"), limit=limit)
        _record("api.devices", None, {"devices": len(page.devices)})
        return jsonify(
            {
                "devices": [queries.device_row(d, page.batch_names) for d in page.devices],
                "next_cursor": page.next_cursor,
            }
        )

    @bp.get("/alerts")
    def alerts() -> Any:
        status = request.args.get("status", AlertStatus.OPEN.value)
        if status not in {s.value for s in AlertStatus}:
            return api_error("bad_request", 400, f"status: one of {', '.join(AlertStatus)}")
        found = services().registry.alerts.listed(status=status)
        _record("api.alerts", None, {"alerts": len(found)})
        return jsonify({"alerts": [alert_json(a) for a in found], "count": len(found)})

    return bp
