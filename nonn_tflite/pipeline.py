"""The pipeline stages on a run directory: teacher -> partition -> distill (-> convert).

Each function runs one stage inside :meth:`RunDir.stage`, so a stage either finishes and is
recorded in the manifest, or leaves the run as it was. The CLI commands call these.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path


from nonn_tflite.config import (DataConfig, DistillConfig, PartitionConfig, TeacherConfig,
                                from_dict, to_dict)
from nonn_tflite.rundir import RunDir, write_json

log = logging.getLogger("nonn_tflite")


def _save_model(model, path: Path) -> None:
    model.save(path)


def run_teacher(out: str | Path, data: DataConfig, cfg: TeacherConfig, force: bool = False,
                quiet: bool = False, feature_layer: str | None = None) -> RunDir:
    """Train a teacher (or import ``cfg.source``, a user's .keras/.h5) into a new run directory.

    An imported teacher is saved as a graph taking [0, 1] images (its own input convention
    inside, see :func:`nonn_tflite.teacher.import_teacher_model`), so later stages treat it
    exactly like a trained one.
    """
    from nonn_tflite.data import load_dataset
    from nonn_tflite.teacher import evaluate, explain_feature_layer, import_teacher_model, train_teacher
    from nonn_tflite.training import history_csv

    run = RunDir(out)
    ds = load_dataset(data)
    with run.stage("teacher", force=force) as st:
        extra = {}
        if cfg.source:
            imported = import_teacher_model(cfg.source, ds, cfg.input, feature_layer)
            model, history, layer, why = imported.model, None, imported.feature_layer, imported.feature_reason
            cfg = replace(cfg, input=imported.convention.name)
            extra["teacher_import"] = imported.describe()
            log.info("teacher input: %s (%s; validation accuracy %s)", imported.convention.name,
                     imported.chosen_by if imported.chosen_by != "validation accuracy"
                     else "lowest validation cross-entropy of those above chance",
                     ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in imported.scores.items()))
        else:
            model, history = train_teacher(ds, cfg, quiet=quiet)
            layer, why = explain_feature_layer(model, feature_layer)
        log.info("feature layer: %s: %s", layer, why)
        _save_model(model, st.dir / "teacher.keras")
        if history is not None:
            history_csv(history, st.dir / "history_teacher.csv")
        acc = evaluate(model, ds.x_test, ds.y_test)
        st.config = to_dict(cfg)
        st.metrics = {"teacher_accuracy": acc, "teacher_params": int(model.count_params()),
                      "teacher_val_accuracy": evaluate(model, ds.x_val, ds.y_val)}
        st.extra = {"data": to_dict(data), "dataset": ds.describe(), "feature_layer": layer, **extra}
    log.info("teacher %s: test accuracy %.4f, %d params", cfg.source or cfg.arch, acc,
             model.count_params())
    return run


def run_partition(run: RunDir, cfg: PartitionConfig, force: bool = False) -> dict:
    """Partition the teacher's feature-layer filters into ``cfg.students`` groups."""
    from nonn_tflite.partition import filter_activity, partition_filters, plot_partition
    from nonn_tflite.teacher import load_keras_model, predict_features, teacher_view

    run.require("teacher")
    # all the work inside the stage: a finished stage without --force is refused before any of
    # it, and the manifest's stage seconds time the work itself
    with run.stage("partition", force=force) as st:
        ds = run.load_dataset()
        teacher = load_keras_model(run.file("teacher.keras"))
        view = teacher_view(teacher, cfg.feature_layer or run.manifest.get("feature_layer"))
        x = ds.x_val[: cfg.max_images]
        fmap, _ = predict_features(view, x)
        activity = filter_activity(fmap)
        result = partition_filters(activity, cfg)
        doc = result.to_json(cfg, view.feature_layer, len(x))
        write_json(st.dir / "partition.json", doc)
        plot_partition(result, st.dir / "partition.png", cfg.seed)
        st.config = to_dict(cfg)
        st.metrics = {"num_students": cfg.students, "modularity": doc["modularity"]}
    log.info("partition: %d filters -> %s (edge percentile %s%s, %d edges, modularity %.3f, "
             "%d communities)", doc["num_filters"], doc["sizes"], doc["percentile"],
             " chosen by auto" if doc["percentile_requested"] == "auto" else "", doc["edges"],
             doc["modularity"], doc["communities"])
    if doc["warning"]:
        log.warning("partition warning: %s", doc["warning"])
    return doc


def load_partition(run: RunDir) -> dict:
    run.require("partition")
    return json.loads(run.file("partition.json").read_text())


def plan_students(run: RunDir, cfg: DistillConfig) -> tuple[list, list]:
    """Size each student from its device budget (most parameters that fit), from the
    families ``cfg.student_arch`` names (resnet, mbv2, or auto: both)."""
    from nonn_tflite.boards import device_budgets
    from nonn_tflite.sizing import choose_student, student_families

    parts = load_partition(run)["partitions"]
    ds_shape = tuple(run.manifest["dataset"]["input_shape"])
    budgets = device_budgets(len(parts), cfg.budget.flash_kb, cfg.budget.ram_kb, cfg.budget.boards)
    teacher_params = run.manifest.get("metrics", {}).get("teacher_params")
    cap = int(teacher_params * cfg.budget.max_params_fraction) if teacher_params else None
    families = student_families(cfg.student_arch)
    chosen = [choose_student(b, len(p), ds_shape, k, cap, families)
              for k, (b, p) in enumerate(zip(budgets, parts))]
    for k, (est, b, p) in enumerate(zip(chosen, budgets, parts)):
        free = choose_student(b, len(p), ds_shape, k, None, families)  # cached estimates
        if free.params > est.params:  # say so when the share, not the board, sized it
            log.warning("student %d: %s params (%s), capped by --max-student-share %g of the "
                        "teacher's %s; the budget alone would allow %s params (%s)", k,
                        f"{est.params:,}", est.spec.describe(), cfg.budget.max_params_fraction,
                        f"{teacher_params:,}", f"{free.params:,}", free.spec.describe())
    return chosen, budgets


def run_distill(run: RunDir, cfg: DistillConfig, force: bool = False, quiet: bool = False) -> dict:
    """Train the students and the fusion head; record float NoNN accuracy on the test split."""
    from nonn_tflite.distill import distill, nonn_logits
    from nonn_tflite.teacher import load_keras_model, teacher_view
    from nonn_tflite.training import accuracy, history_csv

    run.require("partition")
    estimates, budgets = plan_students(run, cfg)
    students = []
    with run.stage("distill", force=force) as st:  # refused before training, timed with it
        ds = run.load_dataset()
        part = load_partition(run)
        teacher = load_keras_model(run.file("teacher.keras"))
        view = teacher_view(teacher, part.get("feature_layer"))
        result = distill(ds, view, part["partitions"], cfg, estimates, quiet=quiet)
        acc = accuracy(nonn_logits(result.students, result.fusion, ds.x_test), ds.y_test)
        for k, (model, est, budget) in enumerate(zip(result.students, estimates, budgets)):
            _save_model(model, st.dir / f"student_{k}.keras")
            students.append({"id": k, "file": f"student_{k}.keras", "filters": len(part["partitions"][k]),
                             "params": int(model.count_params()), "arch": est.spec.describe(),
                             "width": est.spec.width, "blocks": est.spec.blocks,
                             "family": est.spec.family,
                             "estimated_flash_bytes": est.flash_bytes,
                             "estimated_arena_bytes": est.ram_bytes,
                             "budget": {"flash_bytes": budget.flash_bytes, "ram_bytes": budget.ram_bytes,
                                        "board": budget.board}})
        _save_model(result.fusion, st.dir / "fusion.keras")
        history_csv(result.history, st.dir / "history_distill.csv")
        st.config = to_dict(cfg)
        st.metrics = {"nonn_accuracy": acc, "nonn_val_accuracy": result.val_accuracy,
                      "student_params": [s["params"] for s in students]}
        st.extra = {"students": students}
        if result.extra:  # --views > 1: the view cache's size and build time
            st.extra["view_cache"] = result.extra
    log.info("NoNN (K=%d): test accuracy %.4f", len(students), acc)
    return {"nonn_accuracy": acc, "students": students}


def import_teacher(out: str | Path, teacher_path: str, data: DataConfig, force: bool = False,
                   teacher_input: str | None = None, feature_layer: str | None = None) -> RunDir:
    """A run directory around a user's own pretrained teacher (``teacher_input``: its input
    convention, None to choose it on the validation split)."""
    cfg = TeacherConfig(arch="imported", source=str(teacher_path), input=teacher_input)
    return run_teacher(out, data, cfg, force, feature_layer=feature_layer)


def saved_config(run: RunDir, stage: str, cls, **overrides):
    """A stage's config as recorded in the manifest, with command-line overrides."""
    cfg = from_dict(cls, run.config(stage))
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def summary_rows(run: RunDir) -> list[tuple[str, str]]:
    """Key facts of a run for ``info`` and the end of ``run``."""
    m = run.manifest
    met = m.get("metrics", {})
    rows = [("run", str(run.path)), ("dataset", m.get("dataset", {}).get("name", "?")),
            ("stages", ", ".join(m.get("stages", {})))]
    if "teacher_accuracy" in met:
        rows.append(("teacher", f"{m['config']['teacher'].get('arch')}  {met['teacher_params']:,} params  "
                                f"test accuracy {met['teacher_accuracy']:.4f}"))
    if "nonn_accuracy" in met:
        rows.append(("NoNN (float)", f"K={len(m.get('students', []))}  test accuracy {met['nonn_accuracy']:.4f}"))
    for s in m.get("students", []):
        ratio = met.get("teacher_params", 0) / max(1, s["params"])
        rows.append((f"student {s['id']}", f"{s['filters']} filters  {s['params']:,} params "
                                           f"({ratio:.1f}x fewer than teacher)  {s['arch']}"))
    for key in ("int8_accuracy", "accuracy_int8"):
        if key in met:
            rows.append(("NoNN (int8)", f"test accuracy {met[key]:.4f}"))
    return rows


def student_param_ratio(run: RunDir) -> float:
    met = run.manifest.get("metrics", {})
    params = [s["params"] for s in run.manifest.get("students", [])]
    return float(met.get("teacher_params", 0)) / max(params) if params else float("nan")


__all__ = ["run_teacher", "run_partition", "run_distill", "import_teacher", "summary_rows",
           "saved_config", "plan_students"]
