"""Drives a running Label Studio through its Python SDK for tests/test_labelstudio.py (runs in .venv-labelstudio)."""

# The SDK pins numpy and OpenCV below the main venv's, so it lives in Label Studio's venv and the test runs this file
# with that venv's python: `python tests/labelstudio_sdk.py STEP URL TOKEN ARGS...`, one JSON object on stdout.

import json
import sys
from pathlib import Path

from label_studio_sdk import LabelStudio


def _plain(obj):
    """An SDK model (pydantic) as plain JSON data."""
    if isinstance(obj, list):
        return [_plain(o) for o in obj]
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj


def setup(ls: LabelStudio, config: str, tasks: str, images: str) -> dict:
    """A project with ripeye's labelling config, a local-files storage over the exported images (Label Studio serves
    /data/local-files/ only under one), and the exported tasks imported with their drafts as predictions."""
    export_dir = Path(tasks).parent
    project = ls.projects.create(title="ripeye field capture", label_config=Path(config).read_text(),
                                 description=f"ripeye dataset export {export_dir}")
    storage = ls.import_storage.local.create(project=project.id, path=images, title="ripeye images",
                                             use_blob_urls=False)
    imported = ls.projects.import_tasks(project.id, request=json.loads(Path(tasks).read_text()),
                                        return_task_ids=True)
    found = []
    for task in ls.tasks.list(project=project.id, fields="all"):
        predictions = ls.predictions.list(task=task.id)
        found.append({"id": task.id, "data": task.data, "predictions": _plain(predictions),
                      "annotations": task.total_annotations})
    return {"project": project.id, "storage": storage.id, "imported": _plain(imported), "tasks": found,
            "label_config": ls.projects.get(project.id).label_config}


def accept(ls: LabelStudio, project: str) -> dict:
    """What a person does who finds every draft right: opens each task (its prediction shown as the pre-annotation)
    and presses Submit; the annotation is the prediction's regions, without the model's scores."""
    annotations = []
    for task in ls.tasks.list(project=int(project), fields="all"):
        for prediction in ls.predictions.list(task=task.id):
            result = [{k: v for k, v in r.items() if k != "score"} | {"origin": "prediction"}
                      for r in prediction.result]
            created = ls.annotations.create(task.id, result=result, parent_prediction=prediction.id,
                                            project=int(project), was_cancelled=False, lead_time=1.0)
            annotations.append({"task": task.id, "id": created.id, "regions": len(created.result or [])})
    return {"annotations": annotations}


def export(ls: LabelStudio, project: str, out: str) -> dict:
    """The project's JSON export (an export snapshot, as the Export button makes), written to OUT."""
    tasks = ls.projects.exports.as_json(int(project))
    Path(out).write_text(json.dumps(tasks, indent=1))
    return {"tasks": len(tasks), "file": out}


def main(argv: list[str]) -> None:
    step, url, token, *args = argv
    ls = LabelStudio(base_url=url, api_key=token)
    print(json.dumps({"setup": setup, "accept": accept, "export": export}[step](ls, *args)))


if __name__ == "__main__":
    main(sys.argv[1:])
