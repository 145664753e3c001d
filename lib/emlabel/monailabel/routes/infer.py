"""``POST /infer/{model}``: stock MONAI Label's infer route, with bad input as 4xx.

Same parameters and answers as stock (OHIF, Slicer and ``MONAILabelClient`` are
unchanged). Differences: ``params`` must be a JSON object (400 otherwise); an uploaded
image lives in the server's upload folder only while the request runs; ``output=dicom_seg``
outside DICOMweb mode is a 400; the work runs in the thread pool, not on the event loop.
Machine output is never stored as a human label: see ``EMLabelAppBase.infer``.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from fastapi import BackgroundTasks, File, Form, Request, UploadFile
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.interfaces.utils.app import app_instance

from emlabel.data.validation import check_image_file
from emlabel.errors import InvalidRequestError, NotFoundError
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.infer_options import check_infer_options
from emlabel.monailabel.routes.common import (
    max_upload_bytes,
    parse_json_object,
    staged_upload,
    user_of,
)

INFER_SLOTS = threading.BoundedSemaphore(1)
"""Infers run one at a time (each uses every torch thread); others wait in the pool."""


@http_errors
def run_inference(
    request: Request,
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile | None = File(None),
    label: UploadFile | None = File(None),
    output: ResultType | None = None,
) -> Any:
    """Run infer task ``model`` on a datastore image id, an uploaded file or a session."""
    instance = app_instance()
    options = check_infer_options(parse_json_object(params, "params"))
    instance.check_name("model", model, instance._infers)
    remote = instance.studies.startswith(("http://", "https://"))
    if output == ResultType.dicom_seg and not remote:
        raise InvalidRequestError("output=dicom_seg needs the DICOMweb datastore")
    if output == ResultType.dicom_seg and options.get("label_info") is None:
        raise InvalidRequestError("output=dicom_seg needs params.label_info")
    if not file and not image and not session_id:
        raise InvalidRequestError("give image=<image id>, an image file, or session_id")

    req: dict[str, Any] = {"model": model, "image": image}
    trusted = False
    with contextlib.ExitStack() as stack:
        limit = max_upload_bytes()
        if file:
            req["image"] = str(stack.enter_context(staged_upload(file, max_bytes=limit)))
            check_image_file(req["image"], target_spacing=instance.settings.target_spacing)
            trusted = True
        if label:
            if label.filename and label.filename.endswith(".bin"):
                raise InvalidRequestError("binary scribble labels are not supported; send NIfTI")
            req["label"] = str(stack.enter_context(staged_upload(label, max_bytes=limit)))
        req.update(instance.info().get("config", {}).get("infer", {}))
        req.update(options)
        if session_id:
            session = instance.sessions().get_session(session_id)
            if not session:
                raise NotFoundError(f"session '{session_id}' does not exist (or expired)")
            req["image"], req["session"] = session.image, session.to_json()
            trusted = True
        if trusted and options.get("image") not in (None, req["image"]):
            raise InvalidRequestError("params.image conflicts with the uploaded file / session")
        with INFER_SLOTS:  # CPU-bound: parallel infers only share the same cores
            result = instance.infer(req, user=user_of(request), trusted_image=trusted)
        if output == ResultType.dicom_seg:
            from monailabel.datastore.utils.convert import nifti_to_dicom_seg

            uri = instance.datastore().get_image_uri(image)
            stem = uri.removesuffix(".nii.gz").removesuffix(".nii").removesuffix(".nrrd")
            result["dicom_seg"] = nifti_to_dicom_seg(
                stem, result.get("file") or result.get("label"), options["label_info"], use_itk=True
            )
        return send_response(instance.datastore(), result, output, background_tasks)


ROUTES: dict[str, dict[str, Any]] = {"POST": {"/infer/{model}": run_inference}}
