"""The console's pages: overview, batches, devices, trace and recalls, stats, alerts, reports,
staff. Each route parses its query, makes library calls (provision.queries, audit, recalls,
alerts, stats, staff, outputs) and renders a template; forms post with a CSRF token.

Aggregates over the whole fleet (counts by status, activations per day, per-batch counts,
the stats page) are cached per process for FIGURES_TTL seconds and each page says as of when:
at millions of devices they cost more than a page may take, and a minute old is fresh enough
for an overview. Everything about one device, trace, recall or alert is read live.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)

from provision import alerts as alerts_lib
from provision import audit as audit_lib
from provision import outputs, queries, recalls
from provision import staff as staff_lib
from provision.errors import ProvisionError
from provision.registry import DeviceFilter, DeviceRecord
from provision.states import AlertStatus, DeviceStatus, StaffRole
from provision.trace import TraceQuery, trace_components
from provision.web.common import bounded_int, page_error, services
from provision.web.console.auth import audit, me, needs
from provision.web.console.charts import Series, bar_chart
from provision.web.console.figures import DAYS_CHARTED, STATS_GROUPINGS, Figures, first_day

PAGE_SIZE = 50
TRACE_ROWS_SHOWN = 200
log = logging.getLogger("provision.web.console")


def figures() -> Figures:
    found: Figures = current_app.extensions["provision.figures"]
    return found


def figure(key: str) -> tuple[Any, datetime]:
    """The cached figure KEY (see provision.web.console.figures; `days` is today's)."""
    return figures().get(f"days:{first_day()}" if key == "days" else key)


def _actor() -> str:
    return f"staff:{me().name}"


def _bad(message: str, status: int = 400) -> Any:
    return page_error("bad_request" if status == 400 else "conflict", status, message)


def _device_or_404(device_id: str) -> DeviceRecord:
    if len(device_id) != 16 or any(c not in "0123456789abcdef" for c in device_id):
        abort(404)
    device = services().registry.devices.get(device_id)
    if device is None:
        abort(404)
    return device


def _day(name: str) -> date | None:
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ProvisionError(f"{name}: {text!r} is not a date (YYYY-MM-DD)") from None


def blueprint() -> Blueprint:
    bp = Blueprint("pages", __name__)

    @bp.errorhandler(ProvisionError)
    def _provision_error(exc: ProvisionError) -> Any:
        return _bad(str(exc))

    # -- overview --------------------------------------------------------------------------------

    @bp.get("/")
    @needs(StaffRole.VIEWER)
    def overview() -> Any:
        registry = services().registry
        first = first_day()
        counts, at = figure("status")
        per_day, _ = figure("days")
        batches, _ = figure("batches")
        by_day = dict(per_day)
        days = [(first + timedelta(days=i)).isoformat() for i in range(DAYS_CHARTED)]
        chart = bar_chart(
            f"Activations per day, last {DAYS_CHARTED} days",
            [d[5:] for d in days],
            [Series("activations", "s-activated", [by_day.get(d, 0) for d in days])],
            label_every=15,
        )
        open_alerts = registry.alerts.listed(status=AlertStatus.OPEN)
        return render_template(
            "console/overview.html",
            counts={s.value: counts.get(s.value, 0) for s in DeviceStatus},
            total=sum(counts.values()),
            activations_90=sum(by_day.get(d, 0) for d in days),
            chart=chart,
            alerts=open_alerts[:10],
            alerts_total=len(open_alerts),
            batches=sorted(batches, key=lambda b: b.created_at, reverse=True)[:10],
            as_of=at,
        )

    # -- batches ---------------------------------------------------------------------------------

    @bp.get("/batches")
    @needs(StaffRole.VIEWER)
    def batches() -> Any:
        rows, at = figure("batches")
        rows = sorted(rows, key=lambda b: b.created_at, reverse=True)
        return render_template("console/batches.html", batches=rows, as_of=at)

    @bp.get("/batches/<name>")
    @needs(StaffRole.VIEWER)
    def batch(name: str) -> Any:
        registry = services().registry
        if registry.batches.id_of(name) is None:
            abort(404)
        # The counts from the cached batch figures (a GROUP BY over the batch's devices costs
        # more than a page may take); a batch newer than them is counted now.
        cached, at = figure("batches")
        record = next((b for b in cached if b.name == name), None)
        if record is None:
            record, at = queries.batch_overview(registry, name), datetime.now(UTC)
        out = current_app.config["PROVISION_OUTPUT"]
        return render_template(
            "console/batch.html",
            as_of=at,
            batch=record,
            files=outputs.label_files(out, name, registry.batches.names()),
            summary=outputs.batch_summary(out, name),
        )

    @bp.get("/batches/<name>/files/<filename>")
    @needs(StaffRole.VIEWER)
    def batch_file(name: str, filename: str) -> Any:
        out = current_app.config["PROVISION_OUTPUT"]
        registry = services().registry
        if registry.batches.id_of(name) is None:
            abort(404)
        if filename not in {
            f.name for f in outputs.label_files(out, name, registry.batches.names())
        }:
            abort(404)
        audit("batch.download", name, {"file": filename})
        return send_from_directory(out, filename, as_attachment=True)

    # -- devices ---------------------------------------------------------------------------------

    @bp.get("/devices")
    @needs(StaffRole.VIEWER)
    def devices() -> Any:
        svc = services()
        registry = svc.registry
        q = request.args.get("q", "").strip()
        status_text = request.args.get("status", "").strip()
        if status_text and status_text not in {s.value for s in DeviceStatus}:
            return _bad(f"status: one of {', '.join(DeviceStatus)}, not {status_text!r}")
        filters = {
            k: request.args.get(k, "").strip() or None
            for k in (
                "batch",
                "status",
                "model",
                "line",
                "user",
                "activated_since",
                "activated_until",
            )
        }
        flt = DeviceFilter(
            batch=filters["batch"],
            status=DeviceStatus(status_text) if status_text else None,
            model=filters["model"],
            line=filters["line"],
            user=filters["user"],
            activated_since=_day("activated_since"),
            activated_until=_day("activated_until"),
        )
        filters_set = {k: v for k, v in filters.items() if v}
        names = registry.batches.names_by_id()
        found, page = None, None
        if q:
            if len(q) > 512:
                return _bad("q: at most 512 characters")
            found = queries.find(registry, svc.keyring(), q)
            found.hits = [h for h in found.hits if queries.matches(h.device, flt, names)]
            audit("device.search", None, {"hits": len(found.hits)})
        else:
            after = request.args.get("after") or None
            page = queries.list_devices(registry, flt, after=after, limit=PAGE_SIZE)
            if flt.user:
                audit("device.search", None, {"user_filter": True, "devices": len(page.devices)})
        return render_template(
            "console/devices.html",
            q=q,
            found=found,
            names=names,
            filters=filters,
            filters_set=filters_set,
            page=page,
        )

    @bp.get("/devices/<device_id>")
    @needs(StaffRole.VIEWER)
    def device(device_id: str) -> Any:
        return _device_page(_device_or_404(device_id))

    def _device_page(device: DeviceRecord, error: str | None = None, status: int = 200) -> Any:
        registry = services().registry
        history = audit_lib.device_history(registry, device, limit=500)
        subjects = [("device", device.device_id)]
        if device.user_id:
            subjects.append(("user", device.user_id.lower()))
        if error is None:
            audit("device.view", device.device_id)
        page = render_template(
            "console/device.html",
            device=device,
            history=history,
            recalls=registry.recalls.of_device(device.id),
            holding=registry.recalls.holding(device.id),
            alerts=registry.alerts.about(subjects),
            staff_events=registry.staff.events(subject=device.device_id, limit=50),
            error=error,
        )
        return page, status

    def _change(device_id: str, what: str) -> Any:
        svc = services()
        device = _device_or_404(device_id)
        reason = request.form.get("reason", "")
        ip = request.remote_addr
        try:
            if what == "revoke":
                audit_lib.revoke(svc.registry, svc.keyring(), device, reason, _actor(), ip=ip)
                status = DeviceStatus.REVOKED.value
            else:
                status = audit_lib.unrevoke(
                    svc.registry, svc.keyring(), device, reason, _actor(), ip=ip
                )
        except ProvisionError as exc:
            return _device_page(device, str(exc).replace("--reason", "reason"), 409)
        audit(f"device.{what}", device.device_id, {"reason": reason.strip(), "status": status})
        figures().clear()
        flash(f"Device {device.device_id} is now {status}.")
        return redirect(url_for("pages.device", device_id=device.device_id))

    @bp.post("/devices/<device_id>/revoke")
    @needs(StaffRole.SUPPORT)
    def revoke(device_id: str) -> Any:
        return _change(device_id, "revoke")

    @bp.post("/devices/<device_id>/unrevoke")
    @needs(StaffRole.SUPPORT)
    def unrevoke(device_id: str) -> Any:
        return _change(device_id, "unrevoke")

    # -- trace and recalls -----------------------------------------------------------------------

    def _trace_query(source: Any) -> TraceQuery | None:
        values = {
            k: (source.get(k) or "").strip() or None
            for k in ("lot", "supplier", "component_type", "component_serial")
        }
        return TraceQuery(**values) if any(values.values()) else None

    @bp.get("/trace")
    @needs(StaffRole.VIEWER)
    def trace() -> Any:
        svc = services()
        query = _trace_query(request.args)
        rows: list[Any] = []
        summary = None
        if query is not None:
            result = trace_components(svc.registry, svc.keyring(), query)
            summary = result.summary()
            rows = list(result.devices(TRACE_ROWS_SHOWN))
            audit("trace", None, {"query": result.query, "devices": summary.devices})
        return render_template(
            "console/trace.html",
            args=request.args,
            query=query,
            rows=rows,
            summary=summary,
            shown=TRACE_ROWS_SHOWN,
        )

    @bp.get("/recalls")
    @needs(StaffRole.VIEWER)
    def recalls_page() -> Any:
        return render_template(
            "console/recalls.html", recalls=recalls.list_recalls(services().registry)
        )

    @bp.post("/recalls")
    @needs(StaffRole.SUPPORT)
    def recall_create() -> Any:
        svc = services()
        query = _trace_query(request.form)
        if query is None:
            return _bad("a recall needs the trace it recalls: lot, supplier, type or serial")
        name = request.form.get("name", "").strip()
        reason = request.form.get("reason", "")
        hold = request.form.get("hold") == "on"
        info = recalls.create_recall(
            svc.registry, svc.keyring(), name, query, reason, hold=hold, actor=_actor()
        )
        audit("recall.create", info.recall.name, {"devices": info.counts.devices, "hold": hold})
        flash(f"Recall {info.recall.name} created: {info.counts.devices} devices.")
        return redirect(url_for("pages.recall", name=info.recall.name))

    @bp.get("/recalls/<name>")
    @needs(StaffRole.VIEWER)
    def recall(name: str) -> Any:
        try:
            info = recalls.show_recall(services().registry, name)
        except ProvisionError:
            abort(404)
        return render_template("console/recall.html", info=info, data=info.to_json())

    @bp.get("/recalls/<name>/owners.csv")
    @needs(StaffRole.VIEWER)
    def recall_owners(name: str) -> Any:
        registry = services().registry
        try:
            recalls.get_recall(registry, name)
        except ProvisionError:
            abort(404)
        buf = io.StringIO()
        count = recalls.export_owners(registry, name, buf)
        audit("recall.export_owners", name, {"owners": count})
        return Response(
            buf.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}-owners.csv"'},
        )

    @bp.post("/recalls/<name>/release")
    @needs(StaffRole.SUPPORT)
    def recall_release(name: str) -> Any:
        svc = services()
        device_text = request.form.get("device", "").strip()
        done = recalls.release_device(
            svc.registry, svc.keyring(), name, device_text, actor=_actor()
        )
        audit("recall.release", done.device.device_id, {"recall": name})
        flash(f"Device {done.device.device_id} released from recall {name}.")
        return redirect(url_for("pages.recall", name=name))

    @bp.post("/recalls/<name>/close")
    @needs(StaffRole.SUPPORT)
    def recall_close(name: str) -> Any:
        svc = services()
        recalls.close_recall(svc.registry, svc.keyring(), name, actor=_actor())
        audit("recall.close", name)
        flash(f"Recall {name} closed.")
        return redirect(url_for("pages.recall", name=name))

    # -- stats -----------------------------------------------------------------------------------

    @bp.get("/stats")
    @needs(StaffRole.VIEWER)
    def stats() -> Any:
        by = request.args.get("by", "batch")
        if by not in STATS_GROUPINGS:
            return _bad(f"by: one of {', '.join(STATS_GROUPINGS)}, not {by!r}")
        result, at = figure(f"stats:{by}")
        groups = result["groups"][-60:] if by == "week" else result["groups"][:60]
        chart = bar_chart(
            f"Registered and activated devices by {by}",
            [g["group"] for g in groups],
            [
                Series("registered", "s-registered", [g["registered"] for g in groups]),
                Series(DeviceStatus.ACTIVATED, "s-activated", [g["activated"] for g in groups]),
                Series(DeviceStatus.REVOKED, "s-revoked", [g["revoked"] for g in groups]),
            ],
            label_every=max(1, len(groups) // 12),
        )
        return render_template(
            "console/stats.html",
            by=by,
            groupings=STATS_GROUPINGS,
            groups=result["groups"],
            totals=result["totals"],
            unattached=result["unattached_scans"],
            chart=chart,
            as_of=at,
        )

    # -- alerts ----------------------------------------------------------------------------------

    @bp.get("/alerts")
    @needs(StaffRole.VIEWER)
    def alerts() -> Any:
        registry = services().registry
        return render_template(
            "console/alerts.html",
            open_alerts=registry.alerts.listed(status=AlertStatus.OPEN),
            acked=registry.alerts.listed(status=AlertStatus.ACKNOWLEDGED)[:100],
        )

    @bp.post("/alerts/<alert_id>/ack")
    @needs(StaffRole.SUPPORT)
    def alert_ack(alert_id: str) -> Any:
        note = request.form.get("note", "")
        done = alerts_lib.acknowledge(services().registry, alert_id, _actor(), note)
        audit("alert.ack", done.id, {"rule": done.rule, "note": note.strip()})
        flash(f"Alert {done.id[:12]} acknowledged.")
        return redirect(url_for("pages.alerts"))

    # -- reports ---------------------------------------------------------------------------------

    @bp.get("/reports")
    @needs(StaffRole.VIEWER)
    def reports() -> Any:
        out = current_app.config["PROVISION_OUTPUT"]
        return render_template("console/reports.html", reports=outputs.report_folders(out))

    @bp.get("/reports/<path:path>/<filename>")
    @needs(StaffRole.VIEWER)
    def report_file(path: str, filename: str) -> Any:
        out = current_app.config["PROVISION_OUTPUT"]
        found = outputs.report_folder(out, path)
        if found is None or filename not in found.files:
            abort(404)
        audit("report.download", path, {"file": filename})
        return send_from_directory(f"{out}/{found.path}", filename, as_attachment=True)

    # -- staff (admin) ---------------------------------------------------------------------------

    @bp.get("/staff")
    @needs(StaffRole.ADMIN)
    def staff() -> Any:
        registry = services().registry
        before = bounded_int(request.args.get("before", ""), 1, 2**62)
        events = registry.staff.events(before=before, limit=100)
        return render_template(
            "console/staff.html",
            accounts=registry.staff.all(),
            events=events,
            roles=list(StaffRole),
            older=events[-1].id if len(events) == 100 else None,
        )

    @bp.post("/staff")
    @needs(StaffRole.ADMIN)
    def staff_add() -> Any:
        account = staff_lib.add_staff(
            services().registry,
            request.form.get("username", "").strip(),
            request.form.get("role", ""),
            request.form.get("password", ""),
            me().name,
            request.remote_addr,
        )
        flash(f"Staff account {account.name} ({account.role}) added.")
        return redirect(url_for("pages.staff"))

    @bp.post("/staff/<name>/disable")
    @needs(StaffRole.ADMIN)
    def staff_disable(name: str) -> Any:
        if name == me().name:
            return _bad("you cannot disable your own account")
        staff_lib.disable_staff(services().registry, name, me().name, request.remote_addr)
        flash(f"Staff account {name} disabled.")
        return redirect(url_for("pages.staff"))

    return bp
