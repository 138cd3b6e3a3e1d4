"""Profile outputs: profile.json (one record per model x backend x precision x batch x mode), profile.md,
PNG charts (latency per configuration, latency vs MACs) and the run's manifest.json.

matplotlib is an optional extra (``vmlp-deploy[plot]``), imported only when charts are drawn, with the Agg
backend so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..records import MANIFEST_FORMAT, Artifacts, ProfileStage, RunManifest
from ..rundir import write_json, write_manifest

if TYPE_CHECKING:
    from .inputs import ModelInput
    from .run import ProfileOptions, ProfileResult

FORMAT = "vmlp-deploy-profile/1"


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError('charts need matplotlib: pip install "vmlp-deploy[plot]", or pass --no-charts') from None


def series_label(r: dict[str, Any], modes: int) -> str:
    return f"{r['backend']} {r['precision']}" + (f" ({r['mode']})" if modes > 1 else "")


def write_outputs(out: Path, result: ProfileResult, options: ProfileOptions, models: Sequence[ModelInput],
                  *, command: str, created: str) -> dict[str, str]:
    """Write every file into ``out`` (a staging directory); returns artifact name -> file name."""
    files = {"json": "profile.json", "markdown": "profile.md"}
    records = [r.to_dict() for r in result.records]
    document = {
        "format": FORMAT,
        "created": created,
        "command": command,
        "options": options.to_dict(),
        "environment": result.environment,
        **result.cpu,
        "inputs": [m.to_dict() for m in models],
        "peaks": result.peaks,
        "skipped": result.skipped,
        "warnings": result.warnings,
        "records": records,
    }
    write_json(out / files["json"], document)
    (out / files["markdown"]).write_text(markdown(document))
    if options.charts:
        files["latency_chart"] = "latency.png"
        latency_chart(records, out / files["latency_chart"])
        if any(r.macs_per_image for r in result.records):
            files["macs_chart"] = "latency_vs_macs.png"
            macs_chart(records, out / files["macs_chart"])
    write_manifest(out, RunManifest(
        format=MANIFEST_FORMAT, created=created, command=command,
        stages={"profile": ProfileStage(records=len(result.records), skipped=result.skipped,
                                        warnings=result.warnings, options=options.to_dict(), **result.cpu)},
        artifacts=Artifacts(**files),
        inputs=[m.to_dict() for m in models],
        environment=result.environment,
    ))
    return files


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _cpu_lines(doc: dict[str, Any]) -> list[str]:
    """Host and target CPU: which ISA ran the timings, and whether they stand for the deployment CPU."""
    h, t = doc["host_cpu"], doc["target_cpu"]
    clock = doc["clock"]
    mhz = "clock unknown" if clock["mhz"] is None else f"{clock['mhz']:.0f} MHz"
    return [f"Host CPU: {h['model']}, {h['summary']}, {h['cores']} usable cores, {mhz} ({clock['source']}).  ",
            f"Target CPU (`--target-cpu {t['name']}`): {t['description']} ({t['summary']}). "
            + ("The host runs the target's kernels." if doc["host_stands_for_target"] else _stand_in_line(doc)),
            ""]


def _stand_in_line(doc: dict[str, Any]) -> str:
    """Which backends ran the target's kernels capped, and which ran the host's."""
    capped = doc.get("capped_backends") or {}
    if not capped:
        return "**The timings are the host's and cannot stand for the target**; ceilings are the host's ISA's."
    runs = "; ".join(f"{name} ran the target's kernels with `{' '.join(f'{k}={v}' for k, v in c['env'].items())}`"
                     for name, c in capped.items())
    own = sorted({r["backend"] for r in doc["records"] if r["backend"] not in capped and r["device"].upper() == "CPU"})
    others = f"; {', '.join(own)} timings are the host's and cannot stand for the target" if own else ""
    return (f"{runs} (kernels outside oneDNN keep the host's ISA, so its float parts run faster than on the "
            f"target){others}. Ceilings are the host's ISA's.")


def markdown(doc: dict[str, Any]) -> str:
    env, records = doc["environment"], doc["records"]
    opt, plan = doc["options"], doc["options"]["plan"]
    lines = [
        "# vmlp-deploy profile",
        "",
        f"`{doc['command']}`  ",
        f"{doc['created']} on {env['cpu_model']} ({env['usable_cpus']} usable CPUs; "
        f"flags {' '.join(env['cpu_flags']) or '-'}; governor {env['cpu_governor'] or 'n/a'}; "
        f"load average {', '.join(f'{v:.2f}' for v in env['load_average'] or [])} before the run)  ",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in env["libraries"].items()) + "  ",
        f"Warm-up {plan['warmup_s'] if plan['warmup_s'] is not None else plan['warmup']}"
        f"{' s' if plan['warmup_s'] is not None else ' inferences'}, then "
        + (f"{plan['iterations']} iterations" if plan["iterations"] is not None
           else f"{plan['duration_s']} s (at least {plan['min_iterations']} iterations)")
        + f" per configuration, interleaved in ~{plan['chunk_s']} s visits; threads {opt['threads'] or 'all'}.",
        "",
        *_cpu_lines(doc),
        "## Results",
        "",
        "Latency in ms per inference (one batch). img/s = batch x 1000 / mean latency (what a stream of inferences "
        "sustains, outliers included). GOPS = 2 x MACs / median latency (latency mode) or x throughput "
        "(throughput mode). % probe: against the best probe kernel of the same backend and precision, measured in "
        "this run at its best run (a peak, where a model's rate uses its median), or a model that beat every probe; "
        "% ceiling: against the ISA's theoretical ceiling (below).",
        "",
        "| model | backend | precision | batch | mode | median | mean ± std | p90 | p95 | p99 | min | max "
        "| first | img/s | GMACs/img | GOPS | % probe | % ceiling | CoV |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lat = r["latency_ms"] or {}
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch']} | {r['mode']} "
            f"| {_f(lat.get('median'))} | {_f(lat.get('mean'))} ± {_f(lat.get('std'))} | {_f(lat.get('p90'))} "
            f"| {_f(lat.get('p95'))} | {_f(lat.get('p99'))} | {_f(lat.get('min'))} | {_f(lat.get('max'))} "
            f"| {_f(r['first_inference_ms'])} | {_f(r['throughput_images_per_s'], '.1f')} "
            f"| {_f(r['macs_per_image'] / 1e9 if r['macs_per_image'] else None, '.3f')} "
            f"| {_f(r['achieved_gops'], '.1f')} | {_f(r['probe_percent'], '.1f')} | {_f(r['ceiling_percent'], '.1f')} "
            f"| {r['spread']['value']:.1%}{' ⚠' if r['spread']['warning'] else ''} |")
    if doc["peaks"]:
        lines += ["", "## Probe kernels (same run, backend, precision and threads)", "",
                  "| backend | precision asked | precision used | kernel | shape | best ms | median ms | GOPS |",
                  "|---|---|---|---|---|---:|---:|---:|"]
        for p in doc["peaks"]:
            lines.append(f"| {p['backend']} | {p['precision']} | {p['precision_used']} | {p['kind']} | {p['shape']} "
                         f"| {p['best_ms']:.2f} | {p['median_ms']:.2f} | {p['gops']:.1f} |")
    if doc["ceilings"]:
        lines += ["", f"## Theoretical ceilings ({doc['ceiling_isa']})", "",
                  "| precision | cores | MHz | ops/cycle/core | GOPS | derivation |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {c['precision']} | {c['cores']} | {c['mhz']:.0f} | {c['ops_per_cycle_per_core']} "
                  f"| {c['gops']:.1f} | {c['derivation']} |" for c in doc["ceilings"]]
    shown: set[str] = set()
    for r in records:
        layers = r["layers"]
        key = f"{r['model']}|{r['backend']}|{r['precision']}|{r['batch']}"
        if not layers or key in shown:
            continue
        shown.add(key)
        lines += ["", f"## Layers: {r['model']} on {r['backend']} ({r['precision']}, batch {r['batch']})", "",
                  f"{layers['layers']} executed layers, {layers['total_ms']:.2f} ms per inference summed over "
                  f"layers (mean of {layers['runs']} profiled runs; profiling adds overhead)."
                  + (" Kernel precisions by time: " + ", ".join(f"{k} {v:.0f}%" for k, v in
                                                                 layers["kernel_precisions_percent"].items())
                     if layers["kernel_precisions_percent"] else ""),
                  "", "| category | ms | % | layers |", "|---|---:|---:|---:|"]
        lines += [f"| {c['name']} | {c['time_ms']:.3f} | {c['percent']:.1f} | {c['count']} |"
                  for c in layers["by_category"]]
        lines += ["", "| op type | ms | % | layers |", "|---|---:|---:|---:|"]
        lines += [f"| {o['name']} | {o['time_ms']:.3f} | {o['percent']:.1f} | {o['count']} |"
                  for o in layers["by_op_type"]]
        lines += ["", "| node | kernel | ms | % |", "|---|---|---:|---:|"]
        lines += [f"| `{n['name'][:80]}` | {n['detail']} | {n['time_ms']:.3f} | {n['percent']:.1f} |"
                  for n in layers["by_node"]]
    if doc["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in doc["warnings"]]
    if doc["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


def _plot_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latency-mode records when there are any (throughput-mode latencies are under load)."""
    latency = [r for r in records if r["mode"] == "latency" and r["latency_ms"]]
    return latency or [r for r in records if r["latency_ms"]]


def latency_chart(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Median latency per model (groups) and backend/precision (bars), one panel per batch size;
    whiskers from min to p90."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _plot_records(records)
    batches = sorted({r["batch"] for r in rows})
    modes = len({r["mode"] for r in rows})
    series = list(dict.fromkeys(series_label(r, modes) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))

    def present(model: str, batch: int) -> list[str]:
        """The series measured for ``model``: its bars are centred on its label, with no gaps for the others."""
        return [s for s in series if any(r["model"] == model and r["batch"] == batch and series_label(r, modes) == s
                                         for r in rows)]

    width = 0.8 / max((len(present(m, b)) for m in models for b in batches), default=1)
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(7.5, 3.6 + 1.6 * len(models) * max(len(series), 2) / 2),
                                                        3.6 * len(batches)), squeeze=False)
    colors = plt.get_cmap("tab10")
    only_latency = all(r["mode"] == "latency" for r in rows) and any(r["mode"] != "latency" for r in records)
    for ax, batch in zip(axes[:, 0], batches, strict=True):
        slots = {m: present(m, batch) for m in models}
        for j, name in enumerate(series):
            xs, ys, lo, hi = [], [], [], []
            for i, model in enumerate(models):
                if name not in slots[model]:
                    continue
                lat = next(r for r in rows if r["model"] == model and r["batch"] == batch
                           and series_label(r, modes) == name)["latency_ms"]
                xs.append(i + width * (slots[model].index(name) - (len(slots[model]) - 1) / 2))
                ys.append(lat["median"])
                lo.append(lat["median"] - lat["min"])
                hi.append(lat["p90"] - lat["median"])
            if not xs:
                continue
            bars = ax.bar(xs, ys, width * 0.92, yerr=[lo, hi], capsize=3, label=name, color=colors(j % 10))
            ax.bar_label(bars, labels=[f"{y:.1f}" if y >= 10 else f"{y:.2f}" for y in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(f"batch {batch}: median latency{' (latency mode)' if only_latency else ''}, whiskers min..p90",
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _iso_gops(rates: list[float]) -> list[float]:
    """Round GOPS levels (1, 2, 5 x 10^k) around the measured ``rates``, at most four, for the reference rays."""
    levels = [m * 10.0 ** k for k in range(-3, 7) for m in (1, 2, 5)]
    inside = [g for g in levels if min(rates) / 2 <= g <= max(rates) * 2]
    step = max(1, -(-len(inside) // 4))
    return inside[::step]


def macs_chart(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Median latency against GMACs per inference, one marker series per backend/precision, models annotated."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _plot_records(records) if r["macs_per_image"]]
    modes = len({r["mode"] for r in rows})
    series = list(dict.fromkeys(series_label(r, modes) for r in rows))
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    colors, markers = plt.get_cmap("tab10"), "osD^v<>ph*"
    for j, name in enumerate(series):
        pts = [r for r in rows if series_label(r, modes) == name]
        xs = [r["macs_per_image"] * r["batch"] / 1e9 for r in pts]
        ys = [r["latency_ms"]["median"] for r in pts]
        ax.scatter(xs, ys, label=name, color=colors(j % 10), marker=markers[j % len(markers)], s=46, zorder=3)
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        top = max((r for r in rows if r["model"] == model and r["batch"] == batch),
                  key=lambda r: r["latency_ms"]["median"])
        ax.annotate(f"{model} b{batch}", (top["macs_per_image"] * batch / 1e9, top["latency_ms"]["median"]),
                    fontsize=8, xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel("GMACs per inference (batch x MACs per image)")
    ax.set_ylabel("median latency (ms)")
    ax.set_title("latency vs work: points on one dashed ray run at the same GOPS", fontsize=10)
    ax.grid(alpha=0.3)
    x_max = max(r["macs_per_image"] * r["batch"] for r in rows) / 1e9 * 1.3
    y_max = max(r["latency_ms"]["median"] for r in rows) * 1.12
    for gops in _iso_gops([2000 * r["macs_per_image"] * r["batch"] / 1e9 / r["latency_ms"]["median"] for r in rows]):
        end = min(x_max, gops * y_max / 2000)  # ms = 2 x GMACs / GOPS x 1000
        ax.plot([0, end], [0, 2000 * end / gops], ls="--", lw=0.8, color="0.6", zorder=1)
        ax.annotate(f"{gops:g} GOPS", (end, 2000 * end / gops), fontsize=7, color="0.4", xytext=(-4, -10),
                    textcoords="offset points", ha="right")
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, y_max)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
