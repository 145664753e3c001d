"""DICOMweb mode: DICOM series from volumes, DICOM-SEG, a private Orthanc, uploads.

EMLabel's demo studies are NIfTI volumes; a DICOMweb viewer (OHIF) and MONAI Label's
DICOMweb datastore need DICOM series on a DICOMweb server. This package converts volumes
to CT series (:mod:`.series`), maps label values to DICOM-SEG segments by structure name and
back (:mod:`.seg`), finds dcmqi (:mod:`.dcmqi`), runs a private Orthanc with its DICOMweb
plugin and talks to its REST API (:mod:`.orthanc`), uploads a studies folder with its final
labels as DICOM-SEG (:mod:`.upload`), and runs the whole DICOMweb mode (:mod:`.serve`).
The MONAI Label datastore of this mode is :mod:`emlabel.monailabel.dicomweb`.
"""
