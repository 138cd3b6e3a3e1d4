"""``quantize.md``: the run's settings, calibration data, fidelity and accuracy in one readable page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..records import QuantizeStage, format_db

if TYPE_CHECKING:
    from .stage import QuantizeResult


def ms(v: float) -> str:
    """A latency with three significant figures or more: sub-millisecond runs of tiny models stay readable."""
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def render(r: QuantizeResult) -> str:
    q = r.record.quantize
    assert q is not None, "a quantize result records its stage"
    model = r.record.model
    name = model.name if model and model.name is not None else r.source.stem
    f = r.fidelity.logits
    lines = [f"# INT8 quantization: {name} for {r.backend}", ""]
    lines += [f"Source `{r.source}` → `{r.model_path.name}` in `{r.out_dir}`.", ""]
    if r.warnings:
        lines += ["**Warnings**", ""] + [f"- {w}" for w in r.warnings] + [""]
    lines += _target_section(q)
    lines += ["## Fidelity (held-out samples, INT8 vs FP32)", ""]
    lines += _table(["metric", "value"], [
        ["samples (never used to calibrate)", f.samples],
        ["top-1 agreement", f"{f.top1_agreement:.2%}"],
        ["top-5 agreement (FP32 top-1 in INT8 top-5)", f"{f.top5_agreement:.2%}"],
        ["logits cosine, mean / worst", f"{f.cosine_mean:.5f} / {f.cosine_min:.5f}"],
        ["logits SQNR", f"{format_db(f.sqnr_db)} dB"],
        ["runtime", r.fidelity.runtime + ("" if r.fidelity.precision == "int8"
                                          else f" (float parts pinned to {r.fidelity.precision})")],
    ])
    if r.fidelity.worst_layers:
        title = (f"### Ten worst layers by output SQNR ({r.fidelity.layers_measured} quantized layers, "
                 f"{r.fidelity.layer_samples} samples; {r.fidelity.layer_method})")
        lines += [title, ""]
        lines += _table(["node", "op", "SQNR dB"],
                        [[f"`{w.node}`", w.op_type, format_db(w.sqnr_db)] for w in r.fidelity.worst_layers])
    if r.accuracy is not None:
        a = r.accuracy
        small = f", {a.too_small} smaller than the crop left out" if a.too_small else ""
        lines += [f"## Accuracy on `{a.root}` ({a.images} images, {a.classes} classes, {a.skipped} unreadable{small})",
                  ""]
        lines += _table(["", "FP32", "INT8", "Δ points"], [
            ["top-1", f"{a.top1_fp32:.2%}", f"{a.top1_int8:.2%}", f"{a.delta_points:+.2f}"],
            ["top-5", f"{a.top5_fp32:.2%}", f"{a.top5_int8:.2%}", f"{100 * (a.top5_int8 - a.top5_fp32):+.2f}"],
        ])
    kf = q.keep_float or {}
    lines += ["## Layers kept in float", ""]
    if kf["nodes"]:
        lines += [f"{len(kf['nodes'])} ({kf['mode']}): " + ", ".join(f"`{n}`" for n in kf["nodes"]), ""]
    else:
        lines += ["none" + (f" ({kf['mode']})" if kf["mode"] != "none" else ""), ""]
    if r.sensitivity is not None and len(r.sensitivity.history) > 1:
        lines += _table(["layers in float", "top-1 agreement (calibration samples)"],
                        [[k, f"{a:.2%}"] for k, a in r.sensitivity.history])
    c = r.calibration
    lines += ["## Calibration data", ""]
    lines += _table(["", ""], [
        ["source", c.source],
        ["files found / used", f"{c.files_found} / {c.files_used}"],
        ["images / tensors", f"{c.images} / {c.tensors}"],
        ["calibration / held-out samples", f"{c.calibration_samples} / {c.held_out_samples}"],
        ["skipped (unreadable / too small)", f"{len(c.skipped_unreadable)} / {len(c.skipped_too_small)}"],
        ["seed", c.seed],
        ["preprocessing", f"{q.preprocessing_source}: {_recipe(r.record.preprocessing)}"],
        *([["note", c.note]] if c.note else []),
    ])
    lines += _saturation_section(q.saturation_prediction)
    lines += ["## Settings", ""]
    lines += _table(["setting", "value"], [[k, f"`{v}`"] for k, v in r.settings.items()
                                           if v not in (None, (), [], {}) and k != "recipe"])
    if r.graph_check is not None:
        lines += ["## TensorRT Q/DQ graph check (passed)", ""]
        lines += _table(["check", "value"], [[k, v] for k, v in r.graph_check.items()])
    lines += ["## Time and memory", ""]
    steps = {k: v for k, v in r.timings.items() if k != "total"}
    label = {"speed": "timing INT8 against FP32",
             **({"quantize": "quantize (calibration included)"} if "calibrate" not in steps else {})}
    rows = [[label.get(k, k), f"{v:.1f}"] for k, v in steps.items()]
    if "total" in r.timings:
        rows += [["other (opening the model, writing)", f"{max(r.timings['total'] - sum(steps.values()), 0):.1f}"],
                 ["total", f"{r.timings['total']:.1f}"]]
    lines += _table(["step", "seconds"], rows)
    lines += [f"Peak resident memory of the process: {r.peak_rss_mb:.0f} MB"
              + (f"; of the largest child process (a capped session, NNCF): {r.child_peak_rss_mb:.0f} MB"
                 if r.child_peak_rss_mb else "") + ".", ""]
    return "\n".join(lines)


def _target_section(q: QuantizeStage) -> list[str]:
    """Which CPU the model is for, which it was measured on, the integer scheme, the layout and the gate."""
    t, h, s, g = q.target_cpu, q.host_cpu, q.integer_scheme, q.gate
    if t is None or h is None or s is None or g is None:
        return []
    lay = q.layout or {}
    if q.stand_in:
        env = " ".join(f"{k}={v}" for k, v in q.stand_in["env"].items())
        kernels = ", ".join(f"`{k}`" for k in q.stand_in["integer_kernels"])
        measured_on = (f" — on the target's integer kernels: {q.stand_in['backend']} run with `{env}` "
                       f"({kernels}); the plugin's kernels outside oneDNN keep the host's ISA")
    elif q.host_stands_for_target:
        measured_on = ""
    else:
        measured_on = (" — **not the target's integer kernels**: fidelity below is the host's"
                       + (", the target's saturation is predicted" if q.saturation_prediction else ""))
    rows = [
        ["target CPU", f"`{t['name']}`: {t['summary']} ({t['description']})"],
        ["host CPU (measured on)", f"{h['model']}: {h['summary']}{measured_on}"],
        ["integer scheme", f"`{s['name']}` ({s['description']}): {s['reason']}"],
    ]
    if lay:
        rows.append(["layout", f"`{lay['layout']}` ({lay['how']}: {lay['reason']})"])
    if q.speed:
        sp = q.speed
        rows.append(["INT8 vs FP32 latency (this host)", f"{ms(sp['int8_ms'])} vs {ms(sp['fp32_ms'])} ms, "
                     f"{sp['ratio']:.2f}x ({sp['runtime']}, batch {sp['batch']}; {sp['method']})"])
    verdict = ("not gated" if g["bound"] is None else "passed" if g["passed"]
               else "**failed**, written with --no-gate")
    rows.append(["fidelity gate", f"{verdict}: {g['note']}"])
    return ["## Target", ""] + _table(["", ""], rows)


def _saturation_section(pred: dict[str, Any] | None) -> list[str]:
    if not pred:
        return []
    sm = pred["summary"]
    lines = [f"## Predicted int16 saturation on `{pred['target']}` ({pred['samples']} held-out samples)", "",
             f"{sm['saturated_pairs']} of {sm['pairs']} u8 x s8 pairs ({sm['rate']:.3%}) leave the int16 range in "
             f"{sm['saturating_layers']} of {sm['layers']} integer layers. Method: {pred['method']}.", ""]
    if sm["saturated_pairs"]:
        lines += _table(["node", "kernel", "pairs saturated", "output SQNR dB"],
                        [[f"`{w['node']}`", w["kernel"], f"{w['rate']:.3%}", format_db(w["sqnr_db"])]
                         for w in pred["worst_layers"] if w["saturated_pairs"]])
    return lines


def _recipe(p: dict[str, Any] | None) -> str:
    if not p:
        return "none (tensors were already preprocessed)"
    return (f"resize {p.get('resize_to')} ({p.get('interpolation')}), center crop {p.get('center_crop')}, "
            f"mean {p.get('mean')}, std {p.get('std')}")


def write_report(path: Path, result: QuantizeResult) -> None:
    path.write_text(render(result))
